"""End to end in a real Jupyter kernel: a notebook executed by nbclient against the stub server.

The assertions read the saved notebook, as a user would find it: replies shown, retry notes gone,
errors in at most three lines, and the API key nowhere in the file.
"""

from __future__ import annotations

import ast
import json
import queue
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import execute_notebook, new_notebook, reply_to, send_cell, start_kernel, stop_kernel, text_of, wait_until

pytestmark = pytest.mark.kernel


@pytest.fixture
def kernel_env(stub: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StubServer:
    """The kernel inherits these: the stub's URL, a secret key, short retry waits, and a ledger of its own."""
    monkeypatch.setenv("LLM_USAGE_DB", str(tmp_path / "kernel-usage.sqlite"))
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "0.05")
    monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "0.3")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return stub


CELLS = [
    ("load", "%load_ext ipyllm"),
    ("hello", "%%llm\nHello from the kernel"),
    ("plain", "%%llm --no-stream\nPlain, please"),
    ("script", "from ipyllm.testing import script_remote\nscript_remote({url!r}, '429:0.1', '503')"),
    ("retried", "%%llm\nRetried until it works"),
    ("answer", "answer = %llm -m gpt-4o What is the answer?"),
    ("saved", "%%llm -o saved -f text\nKeep this"),
    ("print", "print(answer, '|', saved)"),
    ("chat1", "%%llm --chat\nMy name is Ada."),
    ("chat2", "%%llm --chat\nWhat is my name?"),
    ("topic", "topic = 'otters'"),
    ("dry", "%%llm --dry-run\nNothing is sent about {topic}"),
    ("bogus", "%llm --bogus hello"),
    ("undefined", "%llm hello {undefined_name}"),
    # The server echoes the key in an error (the cell's source does not hold it: it comes from the environment).
    (
        "echo",
        "import os\nfrom ipyllm.testing import Fault\n"
        "script_remote({url!r}, Fault.status(400, message='bad key ' + os.environ['LLM_API_KEY']))",
    ),
    ("echoed", "%llm Which key?"),
    ("show", "%llm_config --show"),
    ("unset", "%llm_config api_key=none"),
    ("missing", "%llm Anyone there?"),
    ("usage", "%llm_usage"),
    ("frame", "import ipyllm\nframe = ipyllm.usage()\nprint(len(frame), frame['source'].unique().tolist(), frame['cell'].tolist())"),
]
#: A cell's index in the notebook, by name.
AT = {name: index for index, (name, _) in enumerate(CELLS)}
#: The cells that call the model (each leaves one row); --dry-run and bad input leave none.
CALLS = ["hello", "plain", "retried", "answer", "saved", "chat1", "chat2", "echoed", "missing"]
ERRORS = ["bogus", "undefined", "echoed", "missing"]


def execute(cells: list[str], cwd: Path, **format_args: Any) -> nbformat.NotebookNode:
    return execute_notebook(new_notebook([source.format(**format_args) if "{url" in source else source for source in cells]), cwd)


@dataclass
class Executed:
    nb: nbformat.NotebookNode
    stub: StubServer
    saved: str
    usage_db: Path


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executed]:
    # Module scope: one kernel run serves every assertion below. The kernel gets a ledger of its own.
    home = tmp_path_factory.mktemp("kernel")
    monkeypatch = pytest.MonkeyPatch()
    with StubServer() as stub:
        monkeypatch.setenv("JUPYTER_DATA_DIR", str(home / "jupyter-data"))
        monkeypatch.setenv("LLM_USAGE_DB", str(home / "usage.sqlite"))
        monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
        monkeypatch.setenv("LLM_API_KEY", SECRET)
        monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "0.05")
        monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "0.3")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        try:
            nb = execute([source for _, source in CELLS], home, url=stub.base_url)
        finally:
            monkeypatch.undo()
        path = home / "executed.ipynb"
        nbformat.write(nb, path)
        yield Executed(nb, stub, path.read_text(), home / "usage.sqlite")


def outputs(run: Executed, name: str) -> list[dict[str, Any]]:
    return run.nb.cells[AT[name]].outputs


def test_replies_are_shown_with_their_footer(executed: Executed) -> None:
    for name, expected in (("hello", "[gpt-4o-mini] Hello from the kernel"), ("plain", "[gpt-4o-mini] Plain, please")):
        shown = [text_of(o) for o in outputs(executed, name) if text_of(o)]
        assert len(shown) == 1, f"cell {name}: one output, updated in place"
        assert shown[0].startswith(expected)
        assert "gpt-4o-mini · " in shown[0] and " tokens · $" in shown[0] and "· 1 attempt" in shown[0]


def test_the_first_reply_was_streamed_and_the_second_was_not(executed: Executed) -> None:
    bodies = [r.body for r in executed.stub.requests]
    assert bodies[0]["stream"] is True and "stream" not in bodies[1]


def test_retries_end_in_the_reply_and_leave_no_note(executed: Executed) -> None:
    shown = [text_of(o) for o in outputs(executed, "retried") if text_of(o)]
    assert len(shown) == 1 and shown[0].startswith("[gpt-4o-mini] Retried until it works")
    assert "· 3 attempts" in shown[0]
    assert "⏳" not in executed.saved and "rate limited (429), attempt" not in executed.saved


def test_line_magic_value_model_override_and_output_variable(executed: Executed) -> None:
    printed = text_of(outputs(executed, "print")[0])
    assert printed.strip() == "[gpt-4o] What is the answer? | [gpt-4o-mini] Keep this"
    text_output = [o for o in outputs(executed, "saved") if o.get("data")][-1]
    assert set(text_output["data"]) == {"text/plain"}, "-f text shows plain text"


def test_chat_sends_the_earlier_turn(executed: Executed) -> None:
    requests = executed.stub.requests
    chats = [r.body["messages"] for r in requests if r.body.get("messages", [{}])[-1].get("content") == "What is my name?"]
    assert [m["content"] for m in chats[0]] == ["My name is Ada.", "[gpt-4o-mini] My name is Ada.", "What is my name?"]


def test_dry_run_sends_nothing(executed: Executed) -> None:
    assert not any("Nothing is sent" in json.dumps(r.body) for r in executed.stub.requests)
    shown = text_of(outputs(executed, "dry")[0])
    assert "Nothing is sent about otters" in shown and "dry run, nothing sent · gpt-4o-mini" in shown


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bogus", "UsageError: unrecognized arguments: --bogus"),
        ("undefined", "UsageError: unknown name {undefined_name} in the prompt"),
        ("echoed", "RequestRejectedError: <url> rejected the request (400)"),
        ("missing", "MissingKeyError: no API key for openai: set LLM_API_KEY or OPENAI_API_KEY"),
    ],
)
def test_errors_are_at_most_three_lines(executed: Executed, name: str, expected: str) -> None:
    text = "\n".join(text_of(o) for o in outputs(executed, name))
    lines = [line for line in text.splitlines() if line.strip()]
    assert expected.replace("<url>", executed.stub.base_url) in text
    assert len(lines) <= 3, lines


def test_settings_show_masks_the_key_and_usage_is_tabled(executed: Executed) -> None:
    shown = text_of(outputs(executed, "show")[0])
    settings = dict(line.split(None, 1) for line in shown.splitlines() if line.strip())
    # The key was configured (LLM_API_KEY) when --show ran: masked, at most its last four characters.
    assert settings["api_key"] == f"'****{SECRET[-4:]}'"
    assert settings["base_url"] == executed.stub.base_url and settings["model"] == "gpt-4o-mini"
    table = outputs(executed, "usage")[0]["data"]
    assert "text/html" in table and "total" in table["text/plain"] and "gpt-4o" in table["text/plain"]
    total = [line for line in table["text/plain"].splitlines() if line.startswith("total")]
    assert total and total[0].split()[1] == str(len(CALLS)), total
    # Cell k of the notebook ran as In[k + 1].
    cells = [AT[name] + 1 for name in CALLS]
    assert text_of(outputs(executed, "frame")[0]).strip() == f"{len(CALLS)} ['magic'] {cells}"


def test_the_kernels_rows_are_in_its_own_ledger_file(executed: Executed) -> None:
    with sqlite3.connect(executed.usage_db) as connection:
        statuses = [row[0] for row in connection.execute("SELECT status FROM usage ORDER BY id")]
    assert statuses == ["ok"] * 7 + ["error", "error"]


def test_the_key_is_nowhere_in_the_saved_notebook(executed: Executed) -> None:
    # The key was configured while the magics ran, --show printed the settings, and the server echoed
    # the key in an error: the saved file holds at most its masked form.
    echoed = [r for r in executed.stub.requests if r.fault == "status" and r.body["messages"][-1]["content"] == "Which key?"]
    assert len(echoed) == 1 and echoed[0].headers["authorization"] == f"Bearer {SECRET}", "the key was in use"
    assert SECRET not in executed.saved
    assert SECRET[:-4] not in executed.saved and SECRET[8:] not in executed.saved
    assert f"'****{SECRET[-4:]}'" in executed.saved, "the masked form was shown"
    with sqlite3.connect(executed.usage_db) as connection:
        dumped = "\n".join(connection.iterdump())
    assert SECRET not in dumped and SECRET[:-4] not in dumped


def test_a_rerun_cell_replaces_its_chat_turn_in_a_real_kernel(kernel_env: StubServer, tmp_path: Path) -> None:
    """JupyterLab sends each cell's id with execute_request; a re-run must replace that cell's turn."""
    manager, client = start_kernel(tmp_path)
    try:
        assert send_cell(client, "%load_ext ipyllm")["status"] == "ok"
        send_cell(client, "%%llm --chat\nMy name is Ada.", "cell-a")
        send_cell(client, "%%llm --chat\nWhat is my name?", "cell-b")
        send_cell(client, "%%llm --chat\nMy name is Grace.", "cell-a")
        send_cell(client, "%%llm --chat\nAnd now?", "cell-c")
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
        stop_kernel(manager, client)


#: Ample for a loaded 2-core machine, and far below the 120 s that the call would otherwise take.
STOPS_WITHIN = 20.0


@pytest.mark.parametrize("case", ["during-a-slow-answer", "during-a-retry-wait"])
def test_interrupting_the_kernel_stops_at_once_and_records_the_row(
    kernel_env: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str
) -> None:
    monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "1")
    monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "300")
    manager, client = start_kernel(tmp_path)
    try:
        assert client.execute("%load_ext ipyllm", reply=True, timeout=60)["content"]["status"] == "ok"
        if case == "during-a-slow-answer":
            kernel_env.script(Fault.slow(120))
        else:
            kernel_env.script(Fault.rate_limit(retry_after=120))
        # stop_on_error=False: otherwise the kernel aborts the next request if it comes in right after the error.
        msg_id = client.execute("%llm hello", stop_on_error=False)
        # The server has the request: the kernel is waiting for the slow answer, or for the 429's answer.
        wait_until(lambda: len(kernel_env.requests) == 1, 60, "the request to reach the server")
        if case == "during-a-retry-wait":
            # The kernel shows the retry note just before it starts waiting: the 429 was answered.
            def in_the_wait() -> bool:
                try:
                    message = client.get_iopub_msg(timeout=0.1)
                except queue.Empty:
                    return False
                data = message["content"].get("data", {})
                return message["parent_header"].get("msg_id") == msg_id and "attempt 2/6 in 120.0 s" in data.get("text/plain", "")

            wait_until(in_the_wait, 60, "the retry note")
        interrupted_at = time.monotonic()
        manager.interrupt_kernel()
        reply = reply_to(client, msg_id)
        elapsed = time.monotonic() - interrupted_at
        assert elapsed < STOPS_WITHIN, f"stops at once, not after the answer or the wait ({elapsed:.1f} s)"
        # ipyllm.Interrupted, a KeyboardInterrupt that IPython shows as its one line.
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "Interrupted"
        assert reply["content"]["traceback"] and len(reply["content"]["traceback"]) == 1
        assert reply["content"]["traceback"][0].startswith("KeyboardInterrupt: interrupted after ")
        check = client.execute(
            "import ipyllm",
            user_expressions={"rows": "ipyllm.usage()[['status', 'attempts', 'latency_s']].values.tolist()"},
            reply=True,
            timeout=60,
        )
        assert check["content"]["status"] == "ok", check["content"]
        rows = ast.literal_eval(check["content"]["user_expressions"]["rows"]["data"]["text/plain"])
        assert [(status, attempts) for status, attempts, _ in rows] == [("interrupted", 1)]
        assert rows[0][2] < STOPS_WITHIN + 60, "the row's latency ends with the interrupt"
        assert len(kernel_env.requests) == 1, "no second attempt was ever sent"
    finally:
        stop_kernel(manager, client)


def test_ipython_config_py_configures_the_session_in_a_real_kernel(
    kernel_env: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        "c = get_config()  # noqa\n"
        "c.LLMConfig.model = 'gpt-4o'\n"
        "c.LLMConfig.num_retries = 2\n"
        "c.LLMConfig.system = 'From ipython_config.py.'\n"
    )
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LLM_MODEL", "gpt-4.1-mini")  # the config file wins over the environment
    manager, client = start_kernel(tmp_path)
    try:
        assert client.execute("%load_ext ipyllm", reply=True, timeout=60)["content"]["status"] == "ok"
        check = client.execute(
            "import ipyllm\nanswer = %llm hello",
            user_expressions={"settings": "(ipyllm.config.model, ipyllm.config.num_retries, str(answer))"},
            reply=True,
            timeout=60,
        )
        assert check["content"]["status"] == "ok", check["content"]
        shown = ast.literal_eval(check["content"]["user_expressions"]["settings"]["data"]["text/plain"])
        assert shown == ("gpt-4o", 2, "[gpt-4o] hello")
        body = kernel_env.requests[-1].body
        assert body["model"] == "gpt-4o" and body["messages"][0] == {"role": "system", "content": "From ipython_config.py."}
    finally:
        stop_kernel(manager, client)


def test_no_library_noise_reaches_the_cells(executed: Executed) -> None:
    for name, _ in CELLS:
        cell_outputs = outputs(executed, name)
        if name not in ERRORS:
            noise = [o for o in cell_outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
            assert noise == [], (name, noise)
        assert not any("Give Feedback" in text_of(o) or "LiteLLM" in text_of(o) for o in cell_outputs), name
