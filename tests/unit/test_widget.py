"""The model picker without a browser: the binding both ways, refusals, the key, the spend line, closing.

Calls go over real HTTP to the stub server (the ``live`` fixture), so the spend line counts real rows.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pytest
from IPython.utils.capture import capture_output
from ipywidgets.widgets.widget import _instances as widget_instances

import ipyllm
from ipyllm import _api
from ipyllm._litellm import load_litellm
from ipyllm._pickerinfo import typed_model
from ipyllm._widget import Picker, catalogue, describe_model
from ipyllm.testing import StubServer, count_tokens

from ..conftest import SECRET

TYPED_KEY = "sk-typed-in-the-picker-0a1b2c3d4e5f"


@pytest.fixture
def make_picker(live: StubServer) -> Iterator[Callable[[], Picker]]:
    """Pickers bound to the test's session and config, closed at the end of the test."""
    made: list[Picker] = []

    def make() -> Picker:
        made.append(ipyllm.picker())
        return made[-1]

    yield make
    for picker in made:
        picker.close()


def every_state(picker: Picker) -> str:
    """The state of the picker and every widget in it, as a saved notebook's widget state would hold it."""
    parts = [picker, *picker.children, picker.layout, *(child.layout for child in picker.children)]
    states = {widget.model_id: widget.get_state() for widget in parts}
    manager = widgets.Widget.get_manager_state(widgets=parts)
    return json.dumps({"states": states, "manager": manager}, default=str)


def listed(picker: Picker) -> list[str]:
    """The model names the list offers."""
    return [value for _, value in picker.models.options]


def test_import_ipyllm_does_not_import_ipywidgets(tmp_path: Path) -> None:
    code = "import sys, ipyllm; print('ipywidgets' in sys.modules, 'ipyllm._widget' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == ["False", "False"]


def test_the_picker_shows_the_config(make_picker: Callable[[], Picker]) -> None:
    ipyllm.config.update(model="gpt-4o", temperature=0.3, max_tokens=200, budget_usd=1.5)
    picker = make_picker()
    assert picker.provider.value == "openai"
    assert picker.models.value == "gpt-4o"
    assert "gpt-4o-mini" in listed(picker) and "gpt-4o" in listed(picker)
    assert {name: field.value for name, field in picker.fields.items()} == {
        "base_url": ipyllm.config.base_url,
        "temperature": "0.3",
        "max_tokens": "200",
        "budget_usd": "1.5",
    }
    assert picker.api_key.value == "" and "set for this session" in picker.api_key.placeholder


def test_config_changes_move_the_picker_at_once(make_picker: Callable[[], Picker], ip: Any) -> None:
    picker = make_picker()
    ipyllm.config.model = "ollama/llama3"
    assert (picker.provider.value, picker.models.value) == ("ollama", "ollama/llama3")
    assert "ollama/llama3 (ollama)" in picker.info.value
    ip.run_line_magic("llm_config", "model=gpt-4o-mini temperature=0.7 budget_usd=2")
    assert (picker.provider.value, picker.models.value) == ("openai", "gpt-4o-mini")
    assert picker.fields["temperature"].value == "0.7"
    assert picker.fields["budget_usd"].value == "2" and "of $2.00 budget" in picker.spend.value
    ip.run_line_magic("config", "LLMConfig.max_tokens = 64")
    assert picker.fields["max_tokens"].value == "64"
    ipyllm.config.temperature = None
    assert picker.fields["temperature"].value == ""
    ipyllm.config.base_url = "http://localhost:11434"
    assert picker.fields["base_url"].value == "http://localhost:11434"


def test_two_pickers_follow_each_other(make_picker: Callable[[], Picker]) -> None:
    first, second = make_picker(), make_picker()
    first.fields["temperature"].value = "1.25"
    assert ipyllm.config.temperature == 1.25
    assert second.fields["temperature"].value == "1.25"


def test_a_model_picked_in_the_list_answers_the_next_call(make_picker: Callable[[], Picker], ip: Any) -> None:
    picker = make_picker()
    picker.search.value = "4o"
    assert "gpt-4o" in listed(picker) and "gpt-3.5-turbo" not in listed(picker)
    picker.models.value = "gpt-4o"
    assert ipyllm.config.model == "gpt-4o"
    assert str(ipyllm.complete("which model?")) == "[gpt-4o] which model?"
    with capture_output() as captured:
        ip.run_cell("%%llm --no-stream\nand now?")
    assert "[gpt-4o] and now?" in captured.outputs[-1].data["text/markdown"]


def test_a_typed_model_name_gets_the_providers_prefix(make_picker: Callable[[], Picker]) -> None:
    picker = make_picker()
    picker.search.value = "my-local-model"
    typed = picker.models.options[0]
    assert typed == ("openai/my-local-model  (as typed)", "openai/my-local-model")
    picker.models.value = "openai/my-local-model"
    assert ipyllm.config.model == "openai/my-local-model"
    assert picker.models.value == "openai/my-local-model"
    # The stub answers as the model it was asked for: litellm routed the typed name to the base URL.
    assert str(ipyllm.complete("hi")) == "[my-local-model] hi"
    assert "context window unknown<br>per 1M tokens: input unknown · output unknown" in picker.info.value
    # A catalogue name, or one with its own prefix, is taken as it is.
    assert typed_model("gpt-4o", "ollama") == "gpt-4o"
    assert typed_model("ollama/llama3", "openai") == "ollama/llama3"
    assert typed_model("llama3", "ollama") == "ollama/llama3"
    assert typed_model("two words", "openai") is None


def test_text_fields_go_through_the_config(make_picker: Callable[[], Picker]) -> None:
    picker = make_picker()
    picker.fields["temperature"].value = "0.50"
    assert ipyllm.config.temperature == 0.5
    assert picker.fields["temperature"].value == "0.5", "shown as the config holds it"
    picker.fields["max_tokens"].value = "300"
    picker.fields["budget_usd"].value = "0.25"
    assert (ipyllm.config.max_tokens, ipyllm.config.budget_usd) == (300, 0.25)
    picker.fields["budget_usd"].value = ""
    assert ipyllm.config.budget_usd is None, "an emptied field unsets the setting"
    assert picker.message.value == ""


@pytest.mark.parametrize(
    ("name", "bad", "said"),
    [
        ("temperature", "5", "temperature must be a number from 0 to 2 (got '5'); the old value stays."),
        ("temperature", "warm", "temperature must be a number from 0 to 2"),
        ("max_tokens", "2.5", "max_tokens must be a whole number from 1"),
        ("budget_usd", "-1", "budget_usd must be a number of US dollars >= 0"),
        ("base_url", "localhost:8000", "base_url must be an http:// or https:// URL"),
    ],
)
def test_a_refused_value_is_explained_and_the_old_one_stays(make_picker: Callable[[], Picker], name: str, bad: str, said: str) -> None:
    ipyllm.config.update(temperature=0.2, max_tokens=100, budget_usd=3)
    old = getattr(ipyllm.config, name)
    picker = make_picker()
    shown = picker.fields[name].value
    picker.fields[name].value = bad
    assert getattr(ipyllm.config, name) == old
    assert picker.fields[name].value == shown, "the field shows the config's value again"
    assert said in html.unescape(picker.message.value)
    assert "#b00" in picker.message.value
    picker.fields[name].value = shown + " "
    assert picker.message.value == "", "the next accepted value clears the message"


def test_the_typed_key_goes_to_the_session_and_leaves_the_widget(make_picker: Callable[[], Picker], live: StubServer) -> None:
    picker = make_picker()
    assert SECRET not in every_state(picker)
    picker.api_key.value = TYPED_KEY
    assert ipyllm.config.api_key is not None and ipyllm.config.api_key.reveal() == TYPED_KEY
    assert picker.api_key.value == ""
    assert "applied to this session" in picker.message.value
    state = every_state(picker)
    assert TYPED_KEY not in state and TYPED_KEY[-8:] not in state and SECRET not in state
    ipyllm.complete("with the typed key")
    assert live.requests[-1].headers["authorization"] == f"Bearer {TYPED_KEY}"
    # A refused key is not kept either, and the session keeps the key it had.
    picker.api_key.value = "sk-with a space"
    assert picker.api_key.value == ""
    assert ipyllm.config.api_key.reveal() == TYPED_KEY
    assert "api_key must be a non-empty string without spaces" in picker.message.value
    assert "sk-with" not in every_state(picker)


def test_the_model_info_comes_from_litellms_catalogue(make_picker: Callable[[], Picker], monkeypatch: pytest.MonkeyPatch) -> None:
    entry = load_litellm().model_cost["gpt-4o-mini"]
    info = describe_model(ipyllm.config.snapshot(model="gpt-4o-mini"))
    assert info.input_per_million == pytest.approx(entry["input_cost_per_token"] * 1e6)
    assert info.output_per_million == pytest.approx(entry["output_cost_per_token"] * 1e6)
    assert info.context_window == entry["max_input_tokens"]
    assert info.key_available and "set for this session" in info.key_note

    unknown = describe_model(ipyllm.config.snapshot(model="openai/not-in-any-catalogue"))
    assert unknown.context_window is None
    assert unknown.summary().splitlines() == [
        "openai/not-in-any-catalogue (openai) · context window unknown",
        "per 1M tokens: input unknown · output unknown",
    ]
    priced = describe_model(ipyllm.config.snapshot(model="openai/not-in-any-catalogue", prices={"not-in-any-catalogue": "gpt-4o-mini"}))
    assert priced.input_per_million == pytest.approx(entry["input_cost_per_token"] * 1e6), "the session's prices apply"
    assert priced.output_per_million == pytest.approx(entry["output_cost_per_token"] * 1e6)

    ipyllm.config.api_key = None
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    missing = describe_model(ipyllm.config.snapshot(model="gpt-4o-mini"))
    assert not missing.key_available
    assert missing.key_note == "key: none for openai: set LLM_API_KEY or OPENAI_API_KEY, or type one below"
    picker = make_picker()
    assert "key: none for openai" in picker.info.value and "#b00" in picker.info.value
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-000")
    found = describe_model(ipyllm.config.snapshot(model="gpt-4o-mini"))
    assert found.key_available and found.key_note == "key: found in the environment for openai"
    assert describe_model(ipyllm.config.snapshot(model="ollama/llama3")).key_note == "key: none needed (a local server)"


def test_the_catalogue_lists_chat_models_by_provider() -> None:
    known = catalogue()
    model_cost = load_litellm().model_cost
    assert "openai" in known.providers and "anthropic" in known.providers
    for provider in ("openai", "anthropic", "ollama"):
        assert known.chat_models[provider]
        assert all(model_cost[name]["mode"] == "chat" for name in known.chat_models[provider])
        assert all(model_cost[name]["litellm_provider"] == provider for name in known.chat_models[provider])
    assert "text-embedding-3-small" not in known.provider_of


def test_the_spend_line_follows_every_call(make_picker: Callable[[], Picker], ip: Any, live: StubServer) -> None:
    ipyllm.complete("before the picker")
    picker = make_picker()
    assert "1 call · " in picker.spend.value
    ipyllm.complete("one two three")
    with capture_output():
        ip.run_cell("%%llm --no-stream\nfrom the magic")
    worker = threading.Thread(target=ipyllm.complete, args=("from a thread",))
    worker.start()
    worker.join()
    rows = _api.session.ledger.rows()
    assert len(rows) == 4 and {row.source for row in rows} == {"api", "magic"}
    # Expected from what the server answered (its own token counts), priced by hand from litellm's map.
    entry = load_litellm().model_cost["gpt-4o-mini"]
    prompts = [r.body["messages"][-1]["content"] for r in live.requests]
    assert sorted(prompts) == sorted(["before the picker", "one two three", "from the magic", "from a thread"])
    inputs = [count_tokens(p) + 3 + 3 for p in prompts]
    outputs = [count_tokens(f"[gpt-4o-mini] {p}") for p in prompts]
    tokens = sum(inputs) + sum(outputs)
    cost = sum(inputs) * entry["input_cost_per_token"] + sum(outputs) * entry["output_cost_per_token"]
    assert f"Session spend: 4 calls · {tokens:,} tokens · $" in picker.spend.value
    shown = re.search(r"tokens · \$(\d+\.\d+)", picker.spend.value)
    assert shown is not None, picker.spend.value
    digits = shown[1].lstrip("0.")
    assert len(digits) == 2, f"two significant digits below a cent: {shown[1]}"
    assert float(shown[1]) == pytest.approx(cost, rel=0.05)


def test_closing_unbinds_the_picker(make_picker: Callable[[], Picker]) -> None:
    ledger = _api.session.ledger
    listeners_before = len(ledger._listeners)
    picker = make_picker()
    assert len(ledger._listeners) == listeners_before + 1

    def observers() -> list[Any]:
        return [c for kinds in ipyllm.config._trait_notifiers.values() for callbacks in kinds.values() for c in callbacks]

    assert any(getattr(callback, "__self__", None) is picker for callback in observers())
    picker.close()
    assert len(ledger._listeners) == listeners_before
    assert not any(getattr(callback, "__self__", None) is picker for callback in observers())
    assert all(child.comm is None for child in picker.children) and picker.comm is None
    temperature, spend = picker.fields["temperature"].value, picker.spend.value
    ipyllm.config.temperature = 1.9
    ipyllm.complete("after closing")
    assert (picker.fields["temperature"].value, picker.spend.value) == (temperature, spend)
    picker.close()  # twice is fine


def test_bare_llm_config_shows_the_picker(ip: Any) -> None:
    with capture_output() as captured:
        ip.run_line_magic("llm_config", "")
    views = [o.data for o in captured.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(views) == 1
    assert views[0]["text/plain"] == ("ipyllm model picker (model gpt-4o-mini): a Jupyter widget; %llm_config --show lists the settings")
    model_id = views[0]["application/vnd.jupyter.widget-view+json"]["model_id"]
    shown = widget_instances[model_id]
    assert isinstance(shown, Picker)
    shown.close()
    with capture_output() as captured:
        ip.run_line_magic("llm_config", "--show")
    assert "gpt-4o-mini" in captured.stdout and not captured.outputs


def test_making_a_picker_is_quick_once_litellm_is_imported(live: StubServer) -> None:
    load_litellm()
    catalogue()
    started = time.perf_counter()
    picker = ipyllm.picker()
    elapsed = time.perf_counter() - started
    picker.close()
    assert elapsed < 1.0
