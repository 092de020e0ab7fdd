"""The session in a real IPython shell: reloads keep it, ``%llm_chat`` shows and resets it, no empty outputs.

Over real HTTP to the stub server, like tests/test_magics.py; the same in a real kernel is in
tests/test_session_kernel.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api, _chat, _magics
from ipyllm.testing import Fault, StubServer


def shown(captured: Any) -> list[dict[str, Any]]:
    return [o.data for o in captured.outputs]


@pytest.fixture
def configured_ip(live: StubServer) -> Iterator[Any]:
    """A fresh shell whose configuration (as from ipython_config.py) sets the model and the temperature."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    InteractiveShell.clear_instance()
    settings = Config()
    settings.HistoryManager.enabled = False
    settings.LLMConfig.model = "from-config-file"
    settings.LLMConfig.temperature = 0.7
    shell = InteractiveShell.instance(config=settings)
    ipyllm.chat_reset()
    yield shell
    if "llm" in shell.magics_manager.magics["line"]:
        shell.run_line_magic("unload_ext", "ipyllm")
    ipyllm.chat_reset()
    InteractiveShell.clear_instance()


# -- %reload_ext keeps the session ------------------------------------------------------------------------


def test_the_config_file_applies_on_the_first_load_only(configured_ip: Any) -> None:
    configured_ip.run_line_magic("load_ext", "ipyllm")
    assert (ipyllm.config.model, ipyllm.config.temperature) == ("from-config-file", 0.7), "the config file applies at the first load"
    configured_ip.run_line_magic("llm_config", "model=gpt-4o temperature=0.2")
    configured_ip.run_line_magic("reload_ext", "ipyllm")
    assert (ipyllm.config.model, ipyllm.config.temperature) == ("gpt-4o", 0.2), "%reload_ext keeps what the session set"
    configured_ip.run_line_magic("unload_ext", "ipyllm")
    configured_ip.run_line_magic("load_ext", "ipyllm")
    assert ipyllm.config.model == "gpt-4o", "so does unload + load"
    assert configured_ip.configurables.count(ipyllm.config) == 1


def test_unload_and_load_keep_the_conversation_and_the_usage_rows(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.")
    ip.run_line_magic("unload_ext", "ipyllm")
    ip.run_line_magic("load_ext", "ipyllm")
    ip.run_line_magic("reload_ext", "ipyllm")
    with capture_output():
        ip.run_cell("%%llm --chat\nWhat is my name?")
    assert [m["content"] for m in live.requests[-1].body["messages"]] == [
        "My name is Ada.",
        "[gpt-4o-mini] My name is Ada.",
        "What is my name?",
    ]
    assert len(ipyllm.usage()) == 2
    assert list(ipyllm.chat_history()["prompt"]) == ["My name is Ada.", "What is my name?"]


# -- %llm_chat and the conversation -------------------------------------------------------------------------


def test_llm_chat_shows_the_turns_with_their_tokens(ip: Any, live: StubServer) -> None:
    with capture_output() as empty:
        ip.run_line_magic("llm_chat", "")
    assert "no --chat turns yet" in shown(empty)[0]["text/plain"]
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.", store_history=True)
        ip.run_cell("%%llm --chat\nWhat is my name?", store_history=True)
    with capture_output() as captured:
        ip.run_line_magic("llm_chat", "")
    transcript = shown(captured)[0]
    rows = _api.session.ledger.rows()
    for number, row in enumerate(rows, 1):
        assert f"turn {number} · In[{row.cell}]" in transcript["text/plain"]
        assert f"{row.prompt_tokens}→{row.completion_tokens} tokens" in transcript["text/plain"]
        assert f"{row.prompt_tokens}→{row.completion_tokens} tokens" in transcript["text/markdown"]
    assert "you: What is my name?\n[gpt-4o-mini] What is my name?" in transcript["text/plain"]
    assert f"2 turns, {sum(r.total_tokens for r in rows):,} tokens in all" in transcript["text/plain"]

    history = ipyllm.chat_history()
    assert list(history.index) == [1, 2] and list(history["cell"]) == [row.cell for row in rows]
    assert list(history["prompt_tokens"]) == [row.prompt_tokens for row in rows]
    assert str(history["prompt_tokens"].dtype) == "Int64"


def test_llm_chat_reset_starts_a_new_conversation(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.")
    with capture_output() as captured:
        ip.run_line_magic("llm_chat", "--reset")
    assert captured.stdout.strip() == "new conversation: 1 turn forgotten (their usage rows stay)"
    with capture_output():
        ip.run_cell("%%llm --chat\nWhat is my name?")
    assert len(live.requests[-1].body["messages"]) == 1, "nothing from before the reset is sent"
    assert len(ipyllm.usage()) == 2
    assert ipyllm.chat_reset() == 1 and ipyllm.chat_history().empty


def test_without_cell_ids_a_rerun_cell_is_known_by_its_source(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.")
        ip.run_cell("%%llm --chat\nWhat is my name?")
        ip.run_cell("%%llm --chat\nMy name is Ada.")  # the first cell, run again (nbclient, terminal: no cell id)
        ip.run_cell("%%llm --chat\nAnd now?")
    last = [m["content"] for m in live.requests[-1].body["messages"]]
    assert last == ["What is my name?", "[gpt-4o-mini] What is my name?", "My name is Ada.", "[gpt-4o-mini] My name is Ada.", "And now?"]
    # The re-run itself did not see its own earlier turn.
    assert [m["content"] for m in live.requests[2].body["messages"]].count("My name is Ada.") == 1


def test_several_chat_calls_in_one_cell_are_kept_together_and_replaced_together(ip: Any, live: StubServer) -> None:
    ip.user_ns["questions"] = ["one", "two"]
    loop = "for q in questions:\n    a = %llm --chat {q}\n"
    with capture_output():
        ip.run_cell(loop, cell_id="loop")
    assert [t.prompt for t in _chat.conversation.turns] == ["one", "two"]
    assert [m["content"] for m in live.requests[1].body["messages"]] == ["one", "[gpt-4o-mini] one", "two"]
    with capture_output():
        ip.run_cell(loop, cell_id="loop")
    assert [t.prompt for t in _chat.conversation.turns] == ["one", "two"], "the re-run replaced both turns"
    assert [m["content"] for m in live.requests[2].body["messages"]] == ["one"]


def test_a_magic_called_from_code_outside_a_cell_run_never_replaces_a_turn(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nsame")
        ip.run_cell_magic("llm", "--chat", "same")
        ip.run_cell_magic("llm", "--chat", "same")
    assert len(_chat.conversation.turns) == 3


# -- no empty outputs ---------------------------------------------------------------------------------------


def test_an_assigned_line_magic_and_a_refused_call_leave_no_output(ip: Any, live: StubServer) -> None:
    with capture_output() as captured:
        ip.run_cell("answer = %llm hello")
        live.script(Fault.status(400, "bad request (stub)"), Fault.status(400, "bad request (stub)"))
        ip.run_cell("%%llm\nhello")
        ip.run_cell("%%llm --no-stream\nhello")
    assert shown(captured) == []
    assert ip.user_ns["answer"] == "[gpt-4o-mini] hello"
    assert [r.status for r in _api.session.ledger.rows()] == ["ok", "error", "error"]
    assert captured.stdout.count(f"RequestRejectedError: {live.base_url} rejected the request (400)") == 2


def test_a_failing_cell_after_retries_clears_its_note(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01, num_retries=1)
    live.script(Fault.status(503), Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("%%llm\nhello")
    assert shown(captured) == [], "the note went with the cell's output; only the error remains"
    assert "after 2 attempts" in captured.stdout + captured.stderr
    assert [(r.status, r.attempts) for r in _api.session.ledger.rows()] == [("error", 2)]


def test_a_retried_line_magic_alone_in_its_cell_clears_its_note(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01)
    live.script(Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("answer = %llm hello")
    assert shown(captured) == []
    assert ip.user_ns["answer"].usage.attempts == 2


def test_a_retried_line_magic_among_other_code_leaves_a_trace_not_an_empty_output(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01)
    live.script(Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("print('computed before')\nanswer = %llm hello")
    assert "computed before" in captured.stdout, "other outputs of the cell are never cleared"
    outputs = shown(captured)
    assert outputs[0]["text/plain"].startswith("⏳ server error (503), attempt 2/6")
    assert outputs[-1]["text/plain"] == "answered after 2 attempts"
    assert all(o["text/plain"].strip() for o in outputs)


def test_a_warning_printed_during_the_call_is_never_cleared(ip: Any, live: StubServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01, num_retries=1, usage_db=str(broken))
    live.script(Fault.status(503), Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("%%llm\nhello")
    assert f"cannot use the usage ledger {broken}" in captured.stderr
    assert shown(captured)[-1]["text/plain"] == "gave up after 2 attempts"


def test_the_line_magic_shows_no_stream_and_the_cell_magic_does(ip: Any, live: StubServer) -> None:
    with capture_output() as line:
        ip.run_cell("%llm hello there")
    assert shown(line) == [] and live.requests[0].body["stream"] is True
    with capture_output() as cell:
        ip.run_cell("%%llm\nhello there")
    assert shown(cell)[-1]["text/markdown"].startswith("[gpt-4o-mini] hello there")


def test_the_magics_cell_tracking_resets_after_each_cell(ip: Any) -> None:
    magics = _magics._loaded[id(ip)]
    ip.run_cell("x = 1", cell_id="abc")
    assert magics.cell_id is None and magics.cell_source is None


def test_a_reload_does_not_confuse_runs_before_it_with_runs_after_it(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.")
        ip.run_line_magic("reload_ext", "ipyllm")
        ip.run_cell("%%llm --chat\nMy name is Ada.")
    assert [t.prompt for t in _chat.conversation.turns] == ["My name is Ada."]
    assert len(live.requests[-1].body["messages"]) == 1
