"""The magics in a fresh IPython shell per test, over real HTTP to the stub server: ``%%llm`` and ``%llm`` (options,
formats, streaming, dry runs, retry notes, failures), ``%llm_config``, help, ``%reload_ext`` and ``%unload_ext``
keeping the session, and no empty output left in a cell.

Elsewhere: a prompt's fields in test_prompt.py, ``--chat`` and ``%llm_chat`` in test_chat.py, ``%llm_usage`` in
test_usageview.py, ``%llm_models`` in test_models.py, ``--map`` in test_validate.py and tests/batch/test_kernel.py; the
magics in a real kernel in tests/kernel/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from ipywidgets.widgets.widget import _instances as widget_instances

import ipyllm
from ipyllm import _api, _display, _magics
from ipyllm._litellm import load_litellm
from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import displayed


def test_cell_magic_streams_into_one_display_then_shows_the_footer(ip: Any, live: StubServer) -> None:
    with capture_output() as captured:
        result = ip.run_cell_magic("llm", "", "Tell me about otters.")
    assert result is None
    shown = captured.outputs
    assert len({o.transient["display_id"] if o.transient else None for o in shown}) == 1, "one display, updated in place"
    final = shown[-1].data
    assert final["text/markdown"].startswith("[gpt-4o-mini] Tell me about otters.")
    assert "gpt-4o-mini · " in final["text/markdown"] and "tokens · $" in final["text/markdown"] and "1 attempt" in final["text/markdown"]
    row = _api.session.ledger.rows()[-1]
    assert (row.source, row.status) == ("magic", "ok")
    assert live.requests[0].body["stream"] is True


def test_no_stream_sends_one_plain_request(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell_magic("llm", "--no-stream", "hi")
    assert "stream" not in live.requests[0].body


def test_line_magic_returns_the_reply(ip: Any) -> None:
    with capture_output() as captured:
        ip.run_cell("answer = %llm What's up, doc?")
    answer = ip.user_ns["answer"]
    assert answer == "[gpt-4o-mini] What's up, doc?"
    assert isinstance(answer, ipyllm.Reply) and answer.usage.source == "magic"
    assert displayed(captured) == [], "an assigned line magic leaves no output (not even an empty one)"
    bundle = answer._repr_mimebundle_()
    assert "1 attempt" in bundle["text/markdown"]


def test_the_cell_column_is_the_execution_count(ip: Any) -> None:
    with capture_output():
        ip.run_cell("%llm first", store_history=True)
        ip.run_cell("%llm second", store_history=True)
    cells = [r.cell for r in _api.session.ledger.rows()]
    assert cells == [1, 2]


def test_options_apply_to_this_call_only(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell_magic("llm", "-m gpt-4o -s 'Be brief.' -t 0.2 --max-tokens 40 -o saved", "hello")
    body = live.requests[0].body
    assert body["model"] == "gpt-4o" and body["temperature"] == 0.2 and body["max_tokens"] == 40
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert ip.user_ns["saved"] == "[gpt-4o] hello"
    assert ipyllm.config.model == "gpt-4o-mini" and ipyllm.config.temperature is None


@pytest.mark.parametrize(
    ("fmt", "mime", "expected"),
    [
        ("markdown", "text/markdown", "**bold**"),
        ("code", "text/markdown", "```\n[gpt-4o-mini] **bold**\n```"),
        ("html", "text/html", "[gpt-4o-mini] **bold**<div"),
        ("text", "text/plain", "[gpt-4o-mini] **bold**\n\ngpt-4o-mini"),
    ],
)
def test_formats(ip: Any, fmt: str, mime: str, expected: str) -> None:
    with capture_output() as captured:
        ip.run_cell_magic("llm", f"-f {fmt}", "**bold**")
    final = displayed(captured)[-1]
    assert expected in final[mime]
    if fmt == "text":
        assert set(final) == {"text/plain"}


def test_json_format_pretty_prints_valid_json(ip: Any) -> None:
    bundle = _display.render('{"a": [1, 2]}', "json", "footer")
    assert bundle["text/markdown"].startswith('```json\n{\n  "a": [\n    1,')
    assert "(not valid JSON)" in _display.render("{oops", "json", "footer")["text/markdown"]


def test_json_format_through_the_magic(ip: Any, live: StubServer) -> None:
    # The stub answers "[<model>] <prompt>"; cut after its first 13 tokens (the stub counts words and marks) by
    # --max-tokens 13, a model named {"a":[1,2]} makes the reply the JSON text [{"a":[1,2]}], sent over HTTP.
    with capture_output() as captured:
        ip.run_cell_magic("llm", """-f json --max-tokens 13 -m 'openai/{"a":[1,2]}'""", "ignored")
    assert live.requests[0].body["model"] == '{"a":[1,2]}' and live.requests[0].body["stream"] is True
    shown = displayed(captured)
    final = shown[-1]["text/markdown"]
    assert final.startswith('```json\n[\n  {\n    "a": [\n      1,\n      2\n    ]\n  }\n]\n```'), final
    assert "(not valid JSON)" not in final
    assert all("text/markdown" not in o for o in shown[:-1]), "while streaming, the pieces show as plain text"
    with capture_output() as captured:
        ip.run_cell_magic("llm", "-f json --no-stream", "not json at all")
    final = displayed(captured)[-1]["text/markdown"]
    assert final.startswith("```json\n[gpt-4o-mini] not json at all\n```") and "(not valid JSON)" in final


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("--bogus", "hi", "unrecognized arguments: --bogus"),
        ("-t 5", "hi", "temperature must be a number from 0 to 2"),
        ("-f yaml", "hi", "invalid choice: 'yaml'"),
        ("-o 2x", "hi", "-o needs a variable name"),
        ("", "   ", "nothing to send"),
        ("stray words", "body", "%%llm takes options on its first line"),
    ],
)
def test_bad_input_is_one_usage_error(ip: Any, live: StubServer, line: str, cell: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        ip.run_cell_magic("llm", line, cell)
    assert type(caught.value) is UsageError, "IPython prints a UsageError subclass with a full traceback"
    assert live.requests == []


def test_a_bad_line_magic_flag_is_reported_not_sent(ip: Any, live: StubServer) -> None:
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        ip.run_line_magic("llm", "--bogus hi")
    assert live.requests == []


def test_dry_run_sends_nothing_and_shows_tokens_and_cost(ip: Any, live: StubServer) -> None:
    with capture_output() as captured:
        ip.run_cell_magic("llm", "--dry-run --max-tokens 100 -s 'Be brief.'", "hello there")
    assert live.requests == [] and _api.session.ledger.rows() == []
    text = displayed(captured)[-1]["text/plain"]
    assert '"content": "Be brief."' in text and '"content": "hello there"' in text
    assert "dry run, nothing sent · gpt-4o-mini (openai) · input $" in text
    assert "at most $0.000060 for 100 tokens (max_tokens)" in text


def test_retry_notes_are_replaced_by_the_reply(ip: Any, live: StubServer) -> None:
    load_litellm()  # else the first note says litellm is loading (tests/test_first_call.py)
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01)
    live.script(Fault.rate_limit(retry_after=0), Fault.status(503))
    with capture_output() as captured:
        ip.run_cell_magic("llm", "", "hello")
    shown = displayed(captured)
    assert shown[0]["text/plain"].startswith("⏳ rate limited (429), attempt 2/6 in 0.0 s")
    assert shown[1]["text/plain"].startswith("⏳ server error (503), attempt 3/6 in ")
    assert "3 attempts" in shown[-1]["text/markdown"]
    assert {o.transient["display_id"] for o in captured.outputs} == {captured.outputs[0].transient["display_id"]}


def test_provider_failures_print_one_line(ip: Any, live: StubServer) -> None:
    live.script(Fault.status(401))
    with capture_output() as captured:
        ip.run_cell("%llm hello")
    lines = [line for line in captured.stderr.splitlines() + captured.stdout.splitlines() if line.strip()]
    assert lines == [
        f'AuthenticationError: {live.base_url} refused the API key (401): "Unauthorized (stub)"; '
        "check it, or set LLM_API_KEY or OPENAI_API_KEY, or ipyllm.config.api_key"
    ]
    assert _api.session.ledger.rows()[-1].status == "error"


def test_a_broken_stream_keeps_what_came(ip: Any, live: StubServer) -> None:
    live.script(Fault.break_stream(after_chunks=2))
    with capture_output() as captured:
        ip.run_cell("%%llm\none two three four five")
    assert "[gpt-4o-mini] one …" in displayed(captured)[-1]["text/markdown"]
    assert "StreamBrokenError: the reply broke off" in captured.stdout + captured.stderr


def test_llm_config_sets_shows_and_refuses(ip: Any) -> None:
    ip.run_line_magic("llm_config", "model=gpt-4o temperature=0.5 system='Be brief.' max_tokens=none")
    assert (ipyllm.config.model, ipyllm.config.temperature, ipyllm.config.system, ipyllm.config.max_tokens) == (
        "gpt-4o",
        0.5,
        "Be brief.",
        None,
    )
    with pytest.raises(UsageError, match="temperature must be a number from 0 to 2") as caught:
        ip.run_line_magic("llm_config", "model=gpt-4.1 temperature=7")
    assert type(caught.value) is UsageError
    assert ipyllm.config.model == "gpt-4o", "all or nothing"
    with pytest.raises(UsageError, match="did you mean temperature"):
        ip.run_line_magic("llm_config", "temprature=1")
    with pytest.raises(UsageError, match="expected setting=value"):
        ip.run_line_magic("llm_config", "gpt-4o")
    ip.run_line_magic("llm_config", 'prices={"my-model": "gpt-4o-mini"}')
    assert ipyllm.config.prices == {"my-model": "gpt-4o-mini"}
    assert ipyllm.config.api_key is not None and ipyllm.config.api_key.reveal() == SECRET, "the key is configured"
    with capture_output() as captured:
        ip.run_line_magic("llm_config", "--show")
        ip.run_line_magic("llm_config", "")
    shown = dict(line.split(None, 1) for line in captured.stdout.splitlines() if line.strip())
    assert shown["model"] == "gpt-4o" and shown["temperature"] == "0.5"
    assert shown["api_key"] == f"'****{SECRET[-4:]}'", "masked: at most its last four characters"
    assert SECRET not in captured.stdout and SECRET[:-4] not in captured.stdout
    # The bare form showed a picker: close it, so that it stops following the configuration.
    views = [o.data for o in captured.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(views) == 1
    widget_instances[views[0]["application/vnd.jupyter.widget-view+json"]["model_id"]].close()


def test_config_magic_reaches_the_same_object(ip: Any) -> None:
    ip.run_line_magic("config", "LLMConfig.model = 'gpt-4.1-mini'")
    assert ipyllm.config.model == "gpt-4.1-mini"
    with capture_output() as captured:
        ip.run_line_magic("config", "LLMConfig")
    assert "Current: 'gpt-4.1-mini'" in captured.stdout
    assert SECRET not in captured.stdout


def test_help_is_generated_from_the_arguments(ip: Any) -> None:
    doc = ip.magics_manager.registry["LLMMagics"].llm.__doc__
    assert doc.splitlines()[0].startswith("::")
    for option in ("--model", "--system", "--temperature", "--max-tokens", "--format", "--output", "--no-stream", "--chat", "--dry-run"):
        assert option in doc


def test_unload_and_reload(ip: Any) -> None:
    ip.run_line_magic("unload_ext", "ipyllm")
    assert "llm" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "ipyllm")
    ipyllm.config.model = "gpt-4o"
    ip.run_line_magic("reload_ext", "ipyllm")
    assert "llm" in ip.magics_manager.magics["cell"] and "llm_usage" in ip.magics_manager.magics["line"]
    import ipyllm as again

    assert again.config.model == "gpt-4o", "the session configuration survives a reload"
    assert ip.configurables.count(again.config) == 1


def test_unload_and_reload_keep_the_conversation_and_the_usage_rows(ip: Any, live: StubServer) -> None:
    with capture_output():
        ip.run_cell("%%llm --chat\nMy name is Ada.", cell_id="cell-a")
        ip.run_cell("%llm A call outside the conversation.")
    rows_before = ipyllm.usage()
    assert len(rows_before) == 2
    ip.run_line_magic("unload_ext", "ipyllm")
    assert len(ipyllm.usage()) == 2, "unloading keeps the rows"
    ip.run_line_magic("load_ext", "ipyllm")
    ip.run_line_magic("reload_ext", "ipyllm")
    with capture_output():
        ip.run_cell("%%llm --chat\nWhat is my name?", cell_id="cell-b")
    sent = [m["content"] for m in live.requests[-1].body["messages"]]
    assert sent == ["My name is Ada.", "[gpt-4o-mini] My name is Ada.", "What is my name?"], "the conversation survived"
    frame = ipyllm.usage()
    assert len(frame) == 3 and frame["timestamp"].iloc[:2].tolist() == rows_before["timestamp"].tolist()
    table = ip.run_line_magic("llm_usage", "")
    assert table.loc["total", "calls"] == 3


# -- %reload_ext and %unload_ext keep the session ---------------------------------------------------------------


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


# -- no empty outputs -------------------------------------------------------------------------------------------


def test_an_assigned_line_magic_and_a_refused_call_leave_no_output(ip: Any, live: StubServer) -> None:
    with capture_output() as captured:
        ip.run_cell("answer = %llm hello")
        live.script(Fault.status(400, "bad request (stub)"), Fault.status(400, "bad request (stub)"))
        ip.run_cell("%%llm\nhello")
        ip.run_cell("%%llm --no-stream\nhello")
    assert displayed(captured) == []
    assert ip.user_ns["answer"] == "[gpt-4o-mini] hello"
    assert [r.status for r in _api.session.ledger.rows()] == ["ok", "error", "error"]
    assert captured.stdout.count(f"RequestRejectedError: {live.base_url} rejected the request (400)") == 2


def test_a_failing_cell_after_retries_clears_its_note(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01, num_retries=1)
    live.script(Fault.status(503), Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("%%llm\nhello")
    assert displayed(captured) == [], "the note went with the cell's output; only the error remains"
    assert "after 2 attempts" in captured.stdout + captured.stderr
    assert [(r.status, r.attempts) for r in _api.session.ledger.rows()] == [("error", 2)]


def test_a_retried_line_magic_alone_in_its_cell_clears_its_note(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01)
    live.script(Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("answer = %llm hello")
    assert displayed(captured) == []
    assert ip.user_ns["answer"].usage.attempts == 2


def test_a_retried_line_magic_among_other_code_leaves_a_trace_not_an_empty_output(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0.01)
    live.script(Fault.status(503))
    with capture_output() as captured:
        ip.run_cell("print('computed before')\nanswer = %llm hello")
    assert "computed before" in captured.stdout, "other outputs of the cell are never cleared"
    outputs = displayed(captured)
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
    assert displayed(captured)[-1]["text/plain"] == "gave up after 2 attempts"


def test_the_line_magic_shows_no_stream_and_the_cell_magic_does(ip: Any, live: StubServer) -> None:
    with capture_output() as line:
        ip.run_cell("%llm hello there")
    assert displayed(line) == [] and live.requests[0].body["stream"] is True
    with capture_output() as cell:
        ip.run_cell("%%llm\nhello there")
    assert displayed(cell)[-1]["text/markdown"].startswith("[gpt-4o-mini] hello there")


def test_the_magics_cell_tracking_resets_after_each_cell(ip: Any) -> None:
    magics = _magics._loaded[id(ip)]
    ip.run_cell("x = 1", cell_id="abc")
    assert magics.cell_id is None and magics.cell_source is None
