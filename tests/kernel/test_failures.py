"""Failures in a real Jupyter kernel (issue 10): one line under every ``%xmode``, and no key in the saved notebook.

The key has no recognisable shape and the stub server repeats it in its 401/403 bodies, as OpenAI does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipyllm.testing import Fault, StubServer

from ..helpers import execute_notebook, new_notebook, start_kernel, stop_kernel, text_of
from ..unit.test_secrets import KEY, leaks

pytestmark = pytest.mark.kernel

CELLS = [
    "%load_ext ipyllm",  # 0
    "%xmode Verbose",
    "from ipyllm.testing import script_remote\nscript_remote({url!r}, 'echo')",
    "%llm hello",  # 3: 401 with the key echoed, Verbose
    "%xmode Context",
    "script_remote({url!r}, 'echo')",
    "%%llm\nhello",  # 6: Context
    "%xmode Plain",
    "script_remote({url!r}, 'echo:403')",
    "answer = %llm hello",  # 9: Plain
    "%xmode Verbose",
    "lst = [1, 2, 3]\nname = b'caf\\xe9.txt'.decode('utf-8', 'surrogateescape')",
    "%llm item {{lst[5]}}",  # 12
    "%llm item {{0}}",  # 13
    "import ipyllm\nipyllm.complete(None)",  # 14
    "ipyllm.config.prices = 'x'",  # 15
    "%llm read {{name}}",  # 16
    "ipyllm.complete('x', max_token=5)",  # 17
    "print(ipyllm.usage()[['status', 'attempts']].values.tolist())",  # 18
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nbformat.NotebookNode, StubServer, str]]:
    monkeypatch = pytest.MonkeyPatch()
    with StubServer() as stub:
        monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
        monkeypatch.setenv("LLM_API_KEY", KEY)
        monkeypatch.setenv("LLM_NUM_RETRIES", "0")
        monkeypatch.setenv("LLM_USAGE_DB", ":memory:")
        work = tmp_path_factory.mktemp("kernel-failures")
        nb = execute_notebook(new_notebook([source.format(url=stub.base_url) for source in CELLS]), work)
        path = work / "executed.ipynb"
        nbformat.write(nb, path)
        yield nb, stub, path.read_text()
    monkeypatch.undo()


def shown(nb: nbformat.NotebookNode, index: int) -> list[str]:
    text = "\n".join(text_of(output) for output in nb.cells[index].outputs)
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (3, 'AuthenticationError: <url> refused the API key (401): "Incorrect API key provided: ****'),
        (6, 'AuthenticationError: <url> refused the API key (401): "Incorrect API key provided: ****'),
        (9, 'AuthenticationError: <url> refused the API key (403): "Incorrect API key provided: ****'),
        (12, "UsageError: {lst[5]}: index 5 is out of range for lst (length 3)"),
        (13, "UsageError: {0}: positional fields are not supported, name a variable"),
        (14, "InvalidInputError: the prompt is None: pass a prompt string, or a list of messages"),
        (15, "SettingError: prices must be a dict"),
        (16, "InvalidInputError: message 0 (user) cannot be sent as UTF-8: position 8 holds '\\udce9', a lone surrogate"),
        (17, "InvalidInputError: complete() got the unknown keyword 'max_token': did you mean max_tokens?"),
    ],
)
def test_failures_show_one_line_under_every_xmode(executed: tuple[Any, StubServer, str], index: int, expected: str) -> None:
    nb, stub, _ = executed
    lines = shown(nb, index)
    assert len(lines) == 1 and lines[0].startswith(expected.replace("<url>", stub.base_url)), lines


def test_only_the_provider_calls_were_sent_and_recorded(executed: tuple[Any, StubServer, str]) -> None:
    nb, stub, _ = executed
    assert len(stub.requests) == 3, "bad input sends nothing"
    assert shown(nb, 18) == ["[['error', 1], ['error', 1], ['error', 1]]"], "one row per call sent; none for bad input"


def test_the_key_is_nowhere_in_the_saved_notebook(executed: tuple[Any, StubServer, str]) -> None:
    _, stub, saved = executed
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in stub.requests), "the key did reach the server"
    assert "Verbose" in saved and not leaks(saved)


def test_ctrl_c_under_xmode_verbose_shows_no_key(stub: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Interrupting a slow call: the traceback IPython sends (every frame's variables, in Verbose) has no key."""
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", KEY)
    monkeypatch.setenv("LLM_USAGE_DB", ":memory:")
    manager, client = start_kernel(tmp_path)
    try:
        for code in ("%load_ext ipyllm", "%xmode Verbose", "import ipyllm._litellm as c; c.load_litellm()"):
            assert client.execute(code, reply=True, timeout=60)["content"]["status"] == "ok"
        stub.script(Fault.slow(30))
        msg_id = client.execute("%llm hello")
        deadline = time.monotonic() + 30
        while not stub.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # inside the slow answer: litellm's, the OpenAI SDK's and httpx's frames are on the stack
        manager.interrupt_kernel()
        published: list[dict[str, Any]] = []
        while True:
            message = client.get_iopub_msg(timeout=30)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            published.append(message["content"])
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
        errors = [content for content in published if "ename" in content]
        # ipyllm.Interrupted (a KeyboardInterrupt): one line even under Verbose, so no variables are shown at all.
        assert errors and errors[0]["ename"] == "Interrupted"
        assert not leaks(repr(published))
        assert len(errors[0]["traceback"]) == 1 and errors[0]["traceback"][0].startswith("KeyboardInterrupt: interrupted after ")
    finally:
        stop_kernel(manager, client)
