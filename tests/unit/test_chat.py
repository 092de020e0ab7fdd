"""The ``--chat`` conversation (``ipyllm/_chat.py``): its history sent, a re-run cell's turn replaced (known by its
cell id, or else by its source), several calls of one cell kept together, ``%llm_chat`` showing and resetting it.

In a fresh IPython shell per test, over real HTTP to the stub server; the same in a real kernel is in
tests/kernel/test_session.py.
"""

from __future__ import annotations

from typing import Any

from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api, _chat, _magics
from ipyllm.testing import StubServer

from ..helpers import displayed

# -- %llm_chat and the conversation -------------------------------------------------------------------------


def test_llm_chat_shows_the_turns_with_their_tokens(ip: Any, live: StubServer) -> None:
    with capture_output() as empty:
        ip.run_line_magic("llm_chat", "")
    assert "no --chat turns yet" in displayed(empty)[0]["text/plain"]
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.", store_history=True)
        ip.run_cell("%%llm --chat\nWhat is my name?", store_history=True)
    with capture_output() as captured:
        ip.run_line_magic("llm_chat", "")
    transcript = displayed(captured)[0]
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


def test_a_reload_does_not_confuse_runs_before_it_with_runs_after_it(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.")
        ip.run_line_magic("reload_ext", "ipyllm")
        ip.run_cell("%%llm --chat\nMy name is Ada.")
    assert [t.prompt for t in _chat.conversation.turns] == ["My name is Ada."]
    assert len(live.requests[-1].body["messages"]) == 1


# -- --chat: history sent, a re-run cell's turn replaced --------------------------------------------------------


def test_chat_keeps_history_and_a_rerun_replaces_its_turn(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.", cell_id="cell-a")
        ip.run_cell("%%llm --chat\nWhat is my name?", cell_id="cell-b")
        ip.run_cell("%%llm --chat\nMy name is Grace.", cell_id="cell-a")  # re-run of the first cell
        ip.run_cell("%%llm --chat\nAnd now?", cell_id="cell-c")
    second = live.requests[1].body["messages"]
    assert [m["content"] for m in second] == ["My name is Ada.", "[gpt-4o-mini] My name is Ada.", "What is my name?"]
    rerun = live.requests[2].body["messages"]
    assert [m["content"] for m in rerun] == ["What is my name?", "[gpt-4o-mini] What is my name?", "My name is Grace."], (
        "the cell's own earlier turn is not sent again"
    )
    last = [m["content"] for m in live.requests[3].body["messages"]]
    assert "My name is Ada." not in last and "My name is Grace." in last
    assert [t.cell_id for t in _magics.conversation.turns] == ["cell-b", "cell-a", "cell-c"]


def test_without_chat_no_history_is_sent(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nRemember this.", cell_id="a")
        ip.run_cell("%%llm\nStandalone.", cell_id="b")
    assert len(live.requests[1].body["messages"]) == 1
