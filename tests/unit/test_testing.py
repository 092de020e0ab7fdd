"""The stub server (``ipyllm.testing``): from the command line with scripted faults, its answers to a JSON schema,
and ``offline_unless_configured()``, the one place that chooses between a real provider and the stub.

The stub serves every other test too (the ``stub`` and ``live`` fixtures); its accounting options are checked
where they are used (test_cost.py: cached tokens, reported costs, streams without usage).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import ipyllm
from ipyllm._locations import Memory, SQLiteFile
from ipyllm.testing import StubServer, _notebooks, fit_schema, offline_unless_configured, provider_configured, script_remote


def test_the_stub_server_runs_from_the_command_line(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ipyllm.testing", "--fault", "503"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("ipyllm stub server on http://127.0.0.1:")
        base_url = first.split()[-1]
        request = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("the scripted 503 should have come first")
        except urllib.error.HTTPError as error:
            assert error.code == 503
        script_remote(base_url, "429:2")
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("the remotely scripted 429 should have come next")
        except urllib.error.HTTPError as error:
            assert error.code == 429 and error.headers["Retry-After"] == "2"
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "[gpt-4o-mini] hi"
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            assert "gpt-4o-mini" in [m["id"] for m in json.load(response)["data"]]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_stub_fits_nested_schemas_deterministically() -> None:
    class Item(BaseModel):
        name: str
        tags: list[str]

    class Order(BaseModel):
        item: Item
        paid: bool
        total: float

    schema = Order.model_json_schema()
    value = fit_schema(schema, "name: widget, three words")
    assert Order.model_validate(value) and value == fit_schema(schema, "name: widget, three words")
    assert json.loads(json.dumps(value))["item"]["name"] == "widget"


# -- the one place that chooses between a real provider and the stub --------------------------------------------


@pytest.fixture
def fresh_offline(clean_config: ipyllm.LLMConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[ipyllm.LLMConfig]:
    for name in ("OPENAI_API_KEY", "LLM_API_KEY", "LLM_BASE_URL", "LLM_MODEL", "OLLAMA_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_notebooks, "_offline", None)
    yield clean_config
    if _notebooks._offline is not None:
        _notebooks._offline.stop()


def quietly(function: Any, **kwargs: Any) -> tuple[Any, str]:
    printed = io.StringIO()
    with redirect_stdout(printed):
        result = function(**kwargs)
    return result, printed.getvalue()


def test_without_a_provider_the_stub_starts_once_and_says_so(fresh_offline: ipyllm.LLMConfig, tmp_path: Path) -> None:
    assert provider_configured() is None
    stub, said = quietly(offline_unless_configured)
    assert isinstance(stub, StubServer) and said.count("\n") == 1
    assert said.startswith(f"ipyllm: replies come from the local stub server at {stub.base_url} (no provider is configured)")
    assert fresh_offline.base_url == stub.base_url and fresh_offline.model == "gpt-4o-mini"
    assert fresh_offline.usage_db == SQLiteFile(tmp_path / "jupyter-data" / "ipyllm" / "stub-usage.sqlite"), (
        "stub rows stay out of the real ledger"
    )
    again, said_again = quietly(offline_unless_configured)
    assert again is stub and "stub server" in said_again, "a re-run cell reuses the running stub"


def test_an_explicit_ledger_is_kept_and_a_non_openai_model_is_replaced(fresh_offline: ipyllm.LLMConfig) -> None:
    fresh_offline.update(usage_db=":memory:", model="anthropic/claude-3-5-haiku-latest")
    stub, _ = quietly(offline_unless_configured)
    assert stub is not None and fresh_offline.usage_db == Memory() and fresh_offline.model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("how", "model", "expected"),
    [
        ("OPENAI_API_KEY", "gpt-4o-mini", "openai (model gpt-4o-mini), with its key from the environment"),
        ("api_key", "gpt-4o-mini", "openai (model gpt-4o-mini), with the session's API key"),
        ("base_url", "gpt-4o-mini", "the server at http://127.0.0.1:9/v1 (base_url)"),
        ("model", "ollama/llama3", "ollama (model ollama/llama3), a local server that needs no key"),
    ],
)
def test_a_configured_provider_is_left_alone(
    fresh_offline: ipyllm.LLMConfig, monkeypatch: pytest.MonkeyPatch, how: str, model: str, expected: str
) -> None:
    fresh_offline.model = model
    if how == "OPENAI_API_KEY":
        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    elif how == "api_key":
        fresh_offline.api_key = "sk-session"
    elif how == "base_url":
        fresh_offline.base_url = "http://127.0.0.1:9/v1"
    before = fresh_offline.settings()
    stub, said = quietly(offline_unless_configured)
    assert (
        stub is None
        and said == f"ipyllm: calls go to {expected}: real calls, which a paid provider charges for (budget_usd caps the spend).\n"
    )
    assert fresh_offline.settings() == before
    assert "sk-" not in said


def test_always_uses_the_stub_even_with_a_provider(fresh_offline: ipyllm.LLMConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    stub, said = quietly(offline_unless_configured, always=True)
    assert stub is not None and "stub server" in said and "(this notebook scripts its faults)" in said
    assert fresh_offline.base_url == stub.base_url and fresh_offline.api_key is not None and fresh_offline.api_key.reveal() == "sk-stub"
