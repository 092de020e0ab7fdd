"""Reading a ``%llm`` line (``ipyllm/_prompt.py``): its options and its prompt as typed, and the prompt's ``{name}``
fields filled from the namespace, or named in one ``UsageError`` before anything is sent.

In a fresh IPython shell per test, over real HTTP to the stub server.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipyllm import _api, _prompt
from ipyllm.testing import StubServer


def test_interpolation_fills_names_and_keeps_escaped_braces(ip: Any, live: StubServer) -> None:
    ip.user_ns.update(topic="otters", n=3)
    with capture_output():
        ip.run_cell_magic("llm", "", "Give {n} facts about {topic} as {{json}}.")
    assert live.requests[0].body["messages"][-1]["content"] == "Give 3 facts about otters as {json}."


def test_interpolation_reaches_in_and_attributes() -> None:
    namespace = {"In": ["", "df.describe()"], "x": 3.14159, "obj": argparse.Namespace(name="Ada")}
    assert _prompt.interpolate("{In[1]} / {x:.2f} / {obj.name}", namespace) == "df.describe() / 3.14 / Ada"


def test_interpolation_of_in_formats_and_attributes_through_the_magic(ip: Any, live: StubServer) -> None:
    ip.run_cell("x = 3.14159", store_history=True)
    ip.run_cell("import argparse; obj = argparse.Namespace(name='Ada')", store_history=True)
    with capture_output():
        ip.run_cell("%%llm\nCell one was `{In[1]}`; x is {x:.2f}; the name is {obj.name}.", store_history=True)
    assert ip.user_ns["In"][1] == "x = 3.14159"
    assert live.requests[-1].body["messages"][-1]["content"] == "Cell one was `x = 3.14159`; x is 3.14; the name is Ada."
    with pytest.raises(UsageError, match=r"^\{obj\.missing\}: obj has no attribute 'missing'") as caught:
        ip.run_cell_magic("llm", "", "{obj.missing}")
    assert type(caught.value) is UsageError and len(live.requests) == 1


def test_an_unknown_name_fails_before_anything_is_sent(ip: Any, live: StubServer) -> None:
    with pytest.raises(UsageError, match=r"unknown name \{missing\} in the prompt") as caught:
        ip.run_cell_magic("llm", "", "hello {missing}")
    assert type(caught.value) is UsageError
    assert live.requests == [] and _api.session.ledger.rows() == []


@pytest.mark.parametrize(
    ("line", "options", "prompt"),
    [
        ("-m gpt-4o What's up?", "-m gpt-4o", "What's up?"),
        ("--model=gpt-4o -t 0.1 hello  world ", "--model=gpt-4o -t 0.1", "hello  world"),
        ('-s "Be brief" --chat Tell me "more"', '-s "Be brief" --chat', 'Tell me "more"'),
        ("-- -5 degrees is cold", "", "-5 degrees is cold"),
        ("just a prompt -m here", "", "just a prompt -m here"),
    ],
)
def test_the_line_prompt_is_kept_as_typed(ip: Any, line: str, options: str, prompt: str) -> None:
    parser = ip.magics_manager.registry["LLMMagics"].llm.parser
    assert _prompt.split_prompt(parser, line) == (options, prompt)


def test_a_line_prompt_ending_in_a_question_mark_is_sent_not_taken_for_help(ip: Any, live: StubServer) -> None:
    with capture_output() as captured:
        ip.run_cell("answer = %llm What is pi?")
        ip.run_cell("%llm -t 0.1 Why?")
    assert ip.user_ns["answer"] == "[gpt-4o-mini] What is pi?"
    assert [r.body["messages"][-1]["content"] for r in live.requests] == ["What is pi?", "Why?"]
    assert "Object `pi` not found" not in captured.stdout


def test_the_magics_own_help_still_works(ip: Any) -> None:
    assert _prompt.keep_question_marks(["%llm?\n"]) == ["%llm?\n"]
    assert _prompt.keep_question_marks(["%llm_config x?\n"]) == ["%llm_config x?\n"]
    assert _prompt.keep_question_marks(["  x = %llm Why 'so'?\n"]) == ["  x = get_ipython().run_line_magic('llm', \"Why 'so'?\")\n"]
    with capture_output() as captured:
        ip.run_cell("%llm?")
    assert "--dry-run" in captured.stdout


# -- fields that cannot be filled (the same in a real kernel: tests/kernel/test_failures.py) -----------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("%llm item {lst[5]}", "{lst[5]}: index 5 is out of range for lst (length 3)"),
        ("%llm item {0}", "{0}: positional fields are not supported, name a variable"),
        ("%llm item {}", "{}: positional fields are not supported"),
        ("%llm item {d[b]}", "{d[b]}: d has no key 'b'"),
        ("%llm item {lst.size}", "{lst.size}: lst has no attribute 'size'"),
    ],
)
def test_prompt_fields_that_cannot_be_filled_are_named(ip: Any, live: StubServer, cell: str, expected: str) -> None:
    ip.user_ns.update(lst=[1, 2, 3], d={"a": 1})
    with pytest.raises(UsageError) as caught, capture_output():
        ip.run_line_magic("llm", cell.removeprefix("%llm "))
    assert type(caught.value) is UsageError and str(caught.value).startswith(expected)
    assert live.requests == [] and _api.session.ledger.rows() == []
