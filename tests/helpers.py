"""Helpers several test modules share, each defined once here (fixtures live in conftest.py).

- the repository (``ROOT``), a free port, waiting for a condition;
- calls from many threads, what the stub server received, an error as IPython shows it;
- real kernels and notebooks: started in a temporary directory, a cell sent with its id, a reply awaited,
  the kernel stopped, an output's text.
"""

from __future__ import annotations

import queue
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

import ipyllm
from ipyllm._sqlschema import MIGRATIONS
from ipyllm.testing import StubServer

from .conftest import SECRET

#: The repository: tests read its files (notebooks, docs, binder/) but never write there.
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 40.0, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds have passed; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for ``condition`` (polled every 20 ms); fail the test if it does not hold within ``timeout`` seconds."""
    assert wait_for(condition, timeout, interval=0.02), f"timed out waiting for {what}"


# -- calls -------------------------------------------------------------------------------------------------


def run_threads(count: int, prompt: str, timeout: float = 120, **overrides: Any) -> list[BaseException | None]:
    """``count`` threads, each making one ``ipyllm.complete(f"{prompt} (thread N)", **overrides)`` at once; what
    each raised (None when it was answered)."""
    outcomes: list[BaseException | None] = [None] * count

    def call(index: int) -> None:
        try:
            ipyllm.complete(f"{prompt} (thread {index})", **overrides)
        except BaseException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return outcomes


def displayed(captured: Any) -> list[dict[str, Any]]:
    """What a cell showed under ``capture_output()``: each display's MIME bundle, in order."""
    return [o.data for o in captured.outputs]


def chat_requests(stub: StubServer) -> list[Any]:
    """The chat requests the stub server received (not the embeddings, nor the model list)."""
    return [r for r in stub.requests if r.path.endswith("chat/completions")]


def fails(error: type[BaseException], *args: Any, **kwargs: Any) -> Any:
    """What ``ipyllm.complete(*args, **kwargs)`` raised, which must be an ``error``."""
    with pytest.raises(error) as caught:
        ipyllm.complete(*args, **kwargs)
    return caught.value


#: A budget's refusal line; its figures captured: spent, held, by how many calls in flight, the limit, what the call needs.
REFUSAL = re.compile(
    r"^budget: spent \$([0-9.]+)(?:, \$([0-9.]+) held by (\d+) calls? in flight,)? of \$([0-9.]+) (?:this session|today); "
    r"this call needs at least \$([0-9.]+) \(its input and \d+ output tokens?\): raise \w+ to go on$"
)


def sent_cap(request: Any) -> int | None:
    """The output cap a request to the stub server carried (``max_completion_tokens`` for reasoning models)."""
    body = request.body
    return body.get("max_tokens") or body.get("max_completion_tokens")


def one_line(error: BaseException) -> str:
    """The error as IPython shows it: one line, no key, nothing chained; returns that line."""
    lines = error._render_traceback_()  # type: ignore[attr-defined]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert SECRET not in lines[0] and SECRET[8:] not in lines[0]
    assert error.__cause__ is None and error.__context__ is None, "nothing chained"
    return lines[0]


def ledger_rows(path: Path) -> list[tuple[Any, ...]]:
    """A SQLite ledger file's rows as another connection reads them (what was committed): session, model, status, cost."""
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT session, model, status, cost_usd FROM usage ORDER BY id").fetchall()


def older_ledger(path: Path, version: int, *rows: str) -> None:
    """A ledger file as an older ipyllm left it: the first ``version`` SQLite migrations, then ``rows`` (INSERTs)."""
    with closing(sqlite3.connect(path)) as connection:
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                connection.execute(statement)
        for row in rows:
            connection.execute(row)
        connection.execute(f"PRAGMA user_version = {version}")
        connection.commit()


# -- kernels and notebooks ----------------------------------------------------------------------------------


def start_kernel(cwd: Path) -> tuple[Any, Any]:
    """A fresh ``python3`` kernel working in ``cwd`` (never the repository): its manager and its client."""
    return start_new_kernel(kernel_name="python3", cwd=str(cwd))


def stop_kernel(manager: Any, client: Any) -> None:
    """Drain the kernel's iopub messages, close the channels and shut the kernel down (a test's teardown)."""
    try:
        while True:
            client.get_iopub_msg(timeout=0.01)
    except queue.Empty:
        pass
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def reply_to(client: Any, msg_id: str, timeout: float = 60) -> dict[str, Any]:
    """The shell reply to the request ``msg_id`` (replies to earlier requests are passed over)."""
    while True:
        reply = client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return dict(reply)


def send_cell(client: Any, code: str, cell_id: str | None = None, user_expressions: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` as a notebook frontend does, with the cell's id in the request's metadata when given (as
    JupyterLab sends it; nbclient and terminals send none); the reply's content."""
    content = {"code": code, "silent": False, "store_history": True, "allow_stdin": False, "user_expressions": user_expressions or {}}
    message = client.session.msg("execute_request", content)
    if cell_id is not None:
        message["metadata"]["cellId"] = cell_id
    client.shell_channel.send(message)
    return dict(reply_to(client, message["header"]["msg_id"])["content"])


def new_notebook(cells: list[str]) -> nbformat.NotebookNode:
    """A notebook of these code cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return nb


def execute_notebook(nb: nbformat.NotebookNode, cwd: Path, **options: Any) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` with nbclient in a fresh ``python3`` kernel working in ``cwd``; errors stay in
    their cells unless ``options`` say ``allow_errors=False``."""
    options = {"timeout": 120, "allow_errors": True, **options}
    NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, **options).execute()
    return nb


def text_of(output: dict[str, Any]) -> str:
    """What a saved output shows as text: a stream's text, an error's traceback, a display's markdown or plain text."""
    if output["output_type"] == "stream":
        return str(output["text"])
    if output["output_type"] == "error":
        return "\n".join(output["traceback"])
    data = output.get("data", {})
    return str(data.get("text/markdown") or data.get("text/plain", ""))
