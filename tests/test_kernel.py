"""End to end in a real Jupyter kernel: a notebook executed by nbclient against the stub server.

The assertions read the saved notebook, as a user would find it: replies shown, retry notes gone,
errors in at most three lines, and the API key nowhere in the file.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from ipyllm.testing import Fault, StubServer

from .conftest import SECRET

pytestmark = pytest.mark.kernel


@pytest.fixture
def kernel_env(stub: StubServer, monkeypatch: pytest.MonkeyPatch) -> StubServer:
    """The kernel inherits these: the stub's URL, a secret key, and short retry waits."""
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "0.05")
    monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "0.3")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return stub


CELLS = [
    "%load_ext ipyllm",
    "%%llm\nHello from the kernel",
    "%%llm --no-stream\nPlain, please",
    "from ipyllm.testing import script_remote\nscript_remote({url!r}, '429:0.1', '503')",
    "%%llm\nRetried until it works",
    "answer = %llm -m gpt-4o What is the answer?",
    "%%llm -o saved -f text\nKeep this",
    "print(answer, '|', saved)",
    "%%llm --chat\nMy name is Ada.",
    "%%llm --chat\nWhat is my name?",
    "topic = 'otters'",
    "%%llm --dry-run\nNothing is sent about {topic}",
    "%llm --bogus hello",
    "%llm hello {undefined_name}",
    "%llm_config api_key=none",
    "%llm Anyone there?",
    "%llm_config --show",
    "%llm_usage",
    "import ipyllm\nframe = ipyllm.usage()\nprint(len(frame), frame['source'].unique().tolist(), frame['cell'].tolist())",
]


def execute(cells: list[str], **format_args: Any) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source.format(**format_args) if "{url" in source else source) for source in cells]
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    return nb


def text_of(output: dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    if output["output_type"] == "error":
        return "\n".join(output["traceback"])
    data = output.get("data", {})
    return data.get("text/markdown") or data.get("text/plain", "")


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nbformat.NotebookNode, StubServer, str]]:
    # Module scope: one kernel run serves every assertion below.
    monkeypatch = pytest.MonkeyPatch()
    with StubServer() as stub:
        monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
        monkeypatch.setenv("LLM_API_KEY", SECRET)
        monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "0.05")
        monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "0.3")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        nb = execute(CELLS, url=stub.base_url)
        path = tmp_path_factory.mktemp("kernel") / "executed.ipynb"
        nbformat.write(nb, path)
        yield nb, stub, path.read_text()
    monkeypatch.undo()


def outputs(nb: nbformat.NotebookNode, index: int) -> list[dict[str, Any]]:
    return nb.cells[index].outputs


def test_replies_are_shown_with_their_footer(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    for index, expected in ((1, "[gpt-4o-mini] Hello from the kernel"), (2, "[gpt-4o-mini] Plain, please")):
        shown = [text_of(o) for o in outputs(nb, index) if text_of(o)]
        assert len(shown) == 1, f"cell {index}: one output, updated in place"
        assert shown[0].startswith(expected)
        assert "gpt-4o-mini · " in shown[0] and " tokens · $" in shown[0] and "· 1 attempt" in shown[0]


def test_the_first_reply_was_streamed_and_the_second_was_not(executed: tuple[Any, StubServer, str]) -> None:
    _, stub, _ = executed
    bodies = [r.body for r in stub.requests]
    assert bodies[0]["stream"] is True and "stream" not in bodies[1]


def test_retries_end_in_the_reply_and_leave_no_note(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, saved = executed
    shown = [text_of(o) for o in outputs(nb, 4) if text_of(o)]
    assert len(shown) == 1 and shown[0].startswith("[gpt-4o-mini] Retried until it works")
    assert "· 3 attempts" in shown[0]
    assert "⏳" not in saved and "rate limited (429), attempt" not in saved


def test_line_magic_value_model_override_and_output_variable(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    printed = text_of(outputs(nb, 7)[0])
    assert printed.strip() == "[gpt-4o] What is the answer? | [gpt-4o-mini] Keep this"
    text_output = [o for o in outputs(nb, 6) if o.get("data")][-1]
    assert set(text_output["data"]) == {"text/plain"}, "-f text shows plain text"


def test_chat_sends_the_earlier_turn(executed: tuple[Any, StubServer, str]) -> None:
    _, stub, _ = executed
    chats = [r.body["messages"] for r in stub.requests if r.body.get("messages", [{}])[-1].get("content") == "What is my name?"]
    assert [m["content"] for m in chats[0]] == ["My name is Ada.", "[gpt-4o-mini] My name is Ada.", "What is my name?"]


def test_dry_run_sends_nothing(executed: tuple[Any, StubServer, str]) -> None:
    nb, stub, _ = executed
    assert not any("Nothing is sent" in json.dumps(r.body) for r in stub.requests)
    shown = text_of(outputs(nb, 11)[0])
    assert "Nothing is sent about otters" in shown and "dry run, nothing sent · gpt-4o-mini" in shown


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (12, "UsageError: unrecognized arguments: --bogus"),
        (13, "UsageError: unknown name {undefined_name} in the prompt"),
        (15, "MissingKeyError: no API key for openai: set LLM_API_KEY or OPENAI_API_KEY"),
    ],
)
def test_errors_are_at_most_three_lines(executed: tuple[Any, StubServer, str], index: int, expected: str) -> None:
    nb, _, _ = executed
    text = "\n".join(text_of(o) for o in outputs(nb, index))
    lines = [line for line in text.splitlines() if line.strip()]
    assert expected in text
    assert len(lines) <= 3, lines


def test_settings_show_masks_the_key_and_usage_is_tabled(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    assert "api_key               unset" in text_of(outputs(nb, 16)[0])
    table = outputs(nb, 17)[0]["data"]
    assert "text/html" in table and "total" in table["text/plain"] and "gpt-4o" in table["text/plain"]
    # Eight calls, the one refused for its missing key included; --dry-run and bad input leave no row.
    # Cell k of the notebook ran as In[k + 1] (In[1] loaded the extension).
    calls = [1, 2, 4, 5, 6, 8, 9, 15]
    assert text_of(outputs(nb, 18)[0]).strip() == f"{len(calls)} ['magic'] {[k + 1 for k in calls]}"


def test_the_key_is_nowhere_in_the_saved_notebook(executed: tuple[Any, StubServer, str]) -> None:
    _, _, saved = executed
    assert SECRET not in saved
    assert SECRET[8:] not in saved


def test_a_rerun_cell_replaces_its_chat_turn_in_a_real_kernel(kernel_env: StubServer) -> None:
    """JupyterLab sends each cell's id with execute_request; a re-run must replace that cell's turn."""
    manager, client = start_new_kernel(kernel_name="python3")
    try:

        def run(code: str, cell_id: str | None = None) -> dict[str, Any]:
            message = client.session.msg("execute_request", {"code": code, "silent": False, "store_history": True, "allow_stdin": False})
            if cell_id is not None:
                message["metadata"]["cellId"] = cell_id
            client.shell_channel.send(message)
            while True:
                reply = client.get_shell_msg(timeout=60)
                if reply["parent_header"].get("msg_id") == message["header"]["msg_id"]:
                    return reply["content"]

        assert run("%load_ext ipyllm")["status"] == "ok"
        run("%%llm --chat\nMy name is Ada.", "cell-a")
        run("%%llm --chat\nWhat is my name?", "cell-b")
        run("%%llm --chat\nMy name is Grace.", "cell-a")
        run("%%llm --chat\nAnd now?", "cell-c")
        last = [m["content"] for m in kernel_env.requests[-1].body["messages"]]
        assert "My name is Ada." not in last
        assert last == [
            "What is my name?",
            "[gpt-4o-mini] What is my name?",
            "My name is Grace.",
            "[gpt-4o-mini] My name is Grace.",
            "And now?",
        ]
        assert last.count("What is my name?") == 1
    finally:
        try:
            while True:
                client.get_iopub_msg(timeout=0.01)
        except queue.Empty:
            pass
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [(Fault.slow(30), 1), (Fault.status(503), 1)],
    ids=["during-a-slow-answer", "during-a-retry-wait"],
)
def test_interrupting_the_kernel_stops_at_once_and_records_the_row(
    kernel_env: StubServer, monkeypatch: pytest.MonkeyPatch, fault: Fault, attempts: int
) -> None:
    monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "30")
    monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "60")
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        assert client.execute("%load_ext ipyllm", reply=True, timeout=60)["content"]["status"] == "ok"
        kernel_env.script(fault)
        client.execute("%llm hello")
        deadline = time.monotonic() + 30
        while not kernel_env.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # inside the slow answer, or inside the 30 s wait
        interrupted_at = time.monotonic()
        manager.interrupt_kernel()
        while True:
            reply = client.get_shell_msg(timeout=30)
            if reply["msg_type"] == "execute_reply":
                break
        assert time.monotonic() - interrupted_at < 5, "stops at once"
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        check = client.execute(
            "import ipyllm", user_expressions={"rows": "ipyllm.usage()[['status', 'attempts']].values.tolist()"}, reply=True, timeout=60
        )
        assert check["content"]["user_expressions"]["rows"]["data"]["text/plain"] == f"[['interrupted', {attempts}]]"
        assert len(kernel_env.requests) == 1
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_no_library_noise_reaches_the_cells(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    for index in [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 14, 16, 17]:
        noise = [o for o in nb.cells[index].outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
        assert noise == [], (index, noise)
        assert not any("Give Feedback" in text_of(o) or "LiteLLM" in text_of(o) for o in nb.cells[index].outputs)
