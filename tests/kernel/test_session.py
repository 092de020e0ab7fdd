"""The session in a real Jupyter kernel: reloads keep it, chat turns are known without cell ids, and the saved
notebook holds no empty output.

A notebook executed by nbclient (which sends no cell id), against the stub server, with an
``ipython_config.py`` that sets the model; and a kernel client sending the same source with and without
cell ids, as JupyterLab and a terminal-like client would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import execute_notebook, new_notebook, send_cell, start_kernel, stop_kernel, text_of

pytestmark = pytest.mark.kernel

CELLS = [
    "%load_ext ipyllm",
    "import ipyllm\nfrom ipyllm import _magics\nprint(ipyllm.config.model, _magics._loaded[id(get_ipython())].cell_id)",
    "%llm_config model=gpt-4o-mini num_retries=1",
    "%reload_ext ipyllm",
    "print(ipyllm.config.model, ipyllm.config.num_retries)",
    "answer = %llm What is the answer?",
    "from ipyllm.testing import script_remote\nscript_remote({url!r}, '400')",
    "%%llm\nThis is refused",
    "script_remote({url!r}, '503', '503')",
    "%%llm\nThis fails after a retry",
    "script_remote({url!r}, '503')",
    "retried = %llm Retried once",
    "script_remote({url!r}, '503')",
    "%%llm --chat\nMy name is Ada.",
    "%unload_ext ipyllm",
    "%load_ext ipyllm",
    "%%llm --chat\nWhat is my name?",
    "%llm_chat",
    "print(len(ipyllm.usage()), retried.usage.attempts, answer)",
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nbformat.NotebookNode, StubServer, str]]:
    # One kernel serves every assertion; its ipython_config.py sets the model, as a user's would.
    ipython_dir = tmp_path_factory.mktemp("ipython")
    (ipython_dir / "profile_default").mkdir()
    (ipython_dir / "profile_default" / "ipython_config.py").write_text("c.LLMConfig.model = 'from-config-file'\n")
    monkeypatch = pytest.MonkeyPatch()
    with StubServer() as stub:
        monkeypatch.setenv("IPYTHONDIR", str(ipython_dir))
        monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
        monkeypatch.setenv("LLM_API_KEY", SECRET)
        monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "0.05")
        monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "0.3")
        monkeypatch.setenv("LLM_USAGE_DB", ":memory:")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        nb = new_notebook([source.format(url=stub.base_url) if "{url" in source else source for source in CELLS])
        execute_notebook(nb, tmp_path_factory.mktemp("work"))
        path = Path(tmp_path_factory.mktemp("saved")) / "session.ipynb"
        nbformat.write(nb, path)
        yield nb, stub, path.read_text()
    monkeypatch.undo()


def test_nbclient_sends_no_cell_id_and_the_config_file_applies_at_the_first_load(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    assert text_of(nb.cells[1].outputs[0]).strip() == "from-config-file None"


def test_reload_ext_keeps_what_the_session_set(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    assert text_of(nb.cells[4].outputs[0]).strip() == "gpt-4o-mini 1"


def test_the_saved_notebook_has_no_empty_output(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, saved = executed
    for index, cell in enumerate(nb.cells):
        for output in cell.outputs:
            assert text_of(output).strip(), (index, output)
    assert '"text/plain": ""' not in saved
    assert "⏳" not in saved, "no retry note is left"
    assert SECRET not in saved


def test_assigned_line_magics_leave_no_output_even_after_a_retry(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    assert nb.cells[5].outputs == [] and nb.cells[11].outputs == []
    assert text_of(nb.cells[18].outputs[0]).split()[:3] == ["6", "2", "[gpt-4o-mini]"]


def test_failed_cells_show_only_their_error(executed: tuple[Any, StubServer, str]) -> None:
    nb, _, _ = executed
    refused, gave_up = nb.cells[7].outputs, nb.cells[9].outputs
    assert [o.output_type for o in refused] == ["error"] and "RequestRejectedError" in text_of(refused[0])
    assert [o.output_type for o in gave_up] == ["error"] and "after 2 attempts" in text_of(gave_up[0])


def test_a_retried_cell_shows_its_reply_and_the_conversation_survives_unload(executed: tuple[Any, StubServer, str]) -> None:
    nb, stub, _ = executed
    reply = [text_of(o) for o in nb.cells[13].outputs]
    assert len(reply) == 1 and reply[0].startswith("[gpt-4o-mini] My name is Ada.") and "2 attempts" in reply[0]
    sent = [m["content"] for m in stub.requests[-1].body["messages"]]
    assert sent == ["My name is Ada.", "[gpt-4o-mini] My name is Ada.", "What is my name?"]
    transcript = text_of(nb.cells[17].outputs[0])
    assert "**turn 1 · In[14]**" in transcript and "**turn 2 · In[17]**" in transcript and "2 turns," in transcript
    assert "2 attempts" in transcript, "each turn's footer comes from its usage row"


@pytest.fixture
def kernel(stub: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_USAGE_DB", ":memory:")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    manager, client = start_kernel(tmp_path)
    try:
        turns = {"turns": "[t.prompt for t in __import__('ipyllm')._chat.conversation.turns]"}
        yield lambda code, cell_id=None: send_cell(client, code, cell_id, user_expressions=turns)
    finally:
        stop_kernel(manager, client)


def test_chat_turns_are_known_by_cell_id_or_else_by_source_in_a_real_kernel(kernel: Any, stub: StubServer) -> None:
    def turns(reply: dict[str, Any]) -> str:
        return reply["user_expressions"]["turns"]["data"]["text/plain"]

    assert kernel("%load_ext ipyllm")["status"] == "ok"
    # No cell id (nbclient, papermill, a terminal): the same source run again replaces its turn.
    kernel("%%llm --chat\nMy name is Ada.")
    assert turns(kernel("%%llm --chat\nMy name is Ada.")) == "['My name is Ada.']"
    assert [m["content"] for m in stub.requests[-1].body["messages"]] == ["My name is Ada."]
    # With cell ids (JupyterLab): two cells with the same source are two turns; a re-run replaces its own.
    kernel("%%llm --chat\nAnd again.", "cell-x")
    kernel("%%llm --chat\nAnd again.", "cell-y")
    assert turns(kernel("%%llm --chat\nAnd again!", "cell-x")) == "['My name is Ada.', 'And again.', 'And again!']"
    assert len(stub.requests) == 5
