"""Typos and bad input are refused before anything is sent (issues 10, 17): one line, 0 requests, no row billed.

Over real HTTP to the stub server: each bad input is refused with ipyllm's own exception (``SettingError``,
``InvalidInputError``: one line in IPython, nothing chained), or ``UsageError`` itself from a magic; the
server received nothing, and no usage row was written or billed. Beside each refusal, the good input next to
it still goes through, so that a check refusing everything would fail too.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from pydantic import BaseModel

import ipyllm
from ipyllm import _api
from ipyllm._config import LLMConfig
from ipyllm._litellm import load_litellm
from ipyllm.testing import StubServer

from ..helpers import ROOT, fails, one_line

PRICED = {"gpt-4o-mini": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}}
BAD_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "nonsense"}}, "required": ["name"]}


def message(error: BaseException) -> str:
    """What the error says, checked as IPython shows it (``one_line``: one line, no key, nothing chained)."""
    text = str(error)
    assert text and "\n" not in text, text
    assert one_line(error).endswith(text)
    return text


def refused(kind: type[BaseException], call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(kind) as caught:
        call(*args, **kwargs)
    return message(caught.value)


def nothing_sent(stub: StubServer) -> None:
    assert len(stub.requests) == 0, [r.path for r in stub.requests]
    assert _api.session.ledger.rows() == [], "no usage row for a refused input"


def bodies(stub: StubServer) -> list[str]:
    return sorted(r.body["messages"][-1]["content"] for r in stub.requests if r.path.endswith("chat/completions"))


# -- unknown names ----------------------------------------------------------------------------------------


def test_a_typod_config_attribute_is_refused_and_the_limit_still_applies(live: StubServer) -> None:
    ipyllm.config.update(budget_usd=0, prices=PRICED)
    with pytest.raises(ipyllm.SettingError) as caught:
        ipyllm.config.budget = 5  # type: ignore[attr-defined]
    text = message(caught.value)
    assert isinstance(caught.value, AttributeError), "Pythonic: setattr of an attribute the object does not take"
    assert text.startswith("no setting named 'budget': did you mean budget_usd?")
    assert "budget" not in vars(ipyllm.config) and ipyllm.config.budget_usd == 0
    # The old limit holds: the call is refused by the budget, not sent.
    with pytest.raises(ipyllm.BudgetExceededError):
        ipyllm.complete("hello")
    assert len(live.requests) == 0
    rows = _api.session.ledger.rows()
    assert [row.status for row in rows] == ["over_budget"] and rows[0].cost_usd == 0


def test_every_llmconfig_refuses_unknown_names_and_traitlets_keeps_working() -> None:
    from traitlets.config import Config

    cfg = LLMConfig()
    assert "did you mean temperature?" in refused(AttributeError, setattr, cfg, "temprature", 0.2)
    assert "did you mean model?" in refused(ipyllm.SettingError, LLMConfig, modle="gpt-4o")
    # A real setting, traitlets' own traits and private state, and the config machinery are unchanged.
    cfg.temperature = 0.2
    cfg.parent = None
    cfg._scratch_note = "private names are traitlets' and ours"  # type: ignore[attr-defined]
    c = Config()
    c.LLMConfig.model = "from-config"
    cfg.config = c
    configured = LLMConfig(config=c)
    assert (cfg.temperature, cfg.model, configured.model) == (0.2, "from-config", "from-config")
    seen: list[Any] = []
    cfg.observe(seen.append, names=["model"])
    cfg.model = "gpt-4o"
    assert [change["new"] for change in seen] == ["gpt-4o"]


def test_config_magic_and_llm_config_still_set_settings(ip: Any) -> None:
    ip.run_line_magic("config", "LLMConfig.max_tokens = 77")
    ip.run_line_magic("llm_config", "temperature=0.3")
    assert (ipyllm.config.max_tokens, ipyllm.config.temperature) == (77, 0.3)
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("llm_config", "budget=5")
    assert type(caught.value) is UsageError and "did you mean budget_usd?" in str(caught.value)


KEYWORD_CALLS: dict[str, Callable[..., Any]] = {
    "map": lambda **kw: ipyllm.map("say {value}", ["a", "b"], progress=False, **kw),
    "map(dry_run)": lambda **kw: ipyllm.map("say {value}", ["a", "b"], dry_run=True, **kw),
    "amap": lambda **kw: asyncio.run(ipyllm.amap("say {value}", ["a", "b"], progress=False, **kw)),
    "estimate": lambda **kw: ipyllm.estimate("say a", **kw),
    "acomplete": lambda **kw: asyncio.run(ipyllm.acomplete("say a", **kw)),
    "complete": lambda **kw: ipyllm.complete("say a", **kw),
}


@pytest.mark.parametrize("name", list(KEYWORD_CALLS))
def test_unknown_keywords_are_refused_naming_the_function_called(live: StubServer, name: str) -> None:
    text = refused(ipyllm.InvalidInputError, KEYWORD_CALLS[name], max_token=5)
    function = name.split("(")[0]
    assert text.startswith(f"{function}() got the unknown keyword 'max_token': did you mean max_tokens?"), text
    nothing_sent(live)
    # A keyword the model takes still goes through, and reaches the server (except from the estimate).
    KEYWORD_CALLS[name](top_p=0.5)
    sent = [r.body for r in live.requests]
    assert all(body["top_p"] == 0.5 for body in sent) and (len(sent) > 0) == (name not in ("estimate", "map(dry_run)"))


def test_embed_names_itself_and_estimate_refuses_what_is_not_an_image(live: StubServer) -> None:
    assert refused(ipyllm.InvalidInputError, ipyllm.embed, "x", dimension=4).startswith(
        "embed() got the unknown keyword 'dimension': did you mean dimensions?"
    )
    assert refused(ipyllm.InvalidInputError, ipyllm.estimate, "x", images=[b"\x89PNG"]).startswith(
        "images[0] is bytes, not an image: give a matplotlib figure, a PIL image"
    )
    nothing_sent(live)


# -- numbers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "inf", "-Infinity", "nan"])
def test_an_infinite_or_nan_budget_is_refused_and_the_old_one_stays(live: StubServer, value: Any) -> None:
    ipyllm.config.update(budget_usd=0, prices=PRICED)
    text = refused(ipyllm.SettingError, setattr, ipyllm.config, "budget_usd", value)
    assert text.startswith("budget_usd must be a number of US dollars >= 0") and text.endswith("the old value stays.")
    assert ipyllm.config.budget_usd == 0
    with pytest.raises(ipyllm.BudgetExceededError):
        ipyllm.complete("hello")
    assert len(live.requests) == 0 and all(row.cost_usd == 0 for row in _api.session.ledger.rows())


def test_every_numeric_setting_refuses_infinity(ip: Any, live: StubServer, capfd: pytest.CaptureFixture[str]) -> None:
    for name in ("daily_budget_usd", "user_daily_budget_usd", "temperature", "retry_max_wait", "num_retries", "max_tokens", "timeout"):
        assert "and finite" in refused(ipyllm.SettingError, setattr, ipyllm.config, name, math.inf), name
    per_token = {"m": {"input_cost_per_token": math.inf, "output_cost_per_token": 0.0}}
    assert refused(ipyllm.SettingError, setattr, ipyllm.config, "prices", per_token).startswith("prices must be a dict")
    assert "and finite" in refused(ipyllm.SettingError, ipyllm.complete, "x", budget_usd=math.inf)
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("llm_config", "budget_usd=inf")
    assert type(caught.value) is UsageError and "and finite" in str(caught.value)
    assert LLMConfig(environ={"LLM_BUDGET_USD": "inf"}).budget_usd is None
    assert "ipyllm: ignoring LLM_BUDGET_USD: budget_usd must be" in capfd.readouterr().err
    nothing_sent(live)
    assert ipyllm.config.budget_usd is None


@pytest.mark.parametrize(("argument", "value"), [("concurrency", True), ("concurrency", False), ("processes", True), ("concurrency", 2.0)])
def test_concurrency_and_processes_take_whole_numbers_only(live: StubServer, argument: str, value: Any) -> None:
    text = refused(ipyllm.SettingError, ipyllm.map, "say {value}", ["a"], progress=False, **{argument: value})
    assert text == f"{argument} must be a whole number of at least 1 (got {value!r})"
    assert refused(ipyllm.SettingError, lambda: asyncio.run(ipyllm.amap("say {value}", ["a"], **{argument: value}))) == text
    nothing_sent(live)
    assert ipyllm.map("say {value}", ["a", "b"], concurrency=np.int64(2), progress=False).notna().all()


# -- schemas ----------------------------------------------------------------------------------------------


class Opaque(BaseModel):
    name: str
    check: typing.Callable[[int], int]


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_invalid_json_schema_is_refused_before_sending(live: StubServer, dry_run: bool) -> None:
    words = "schema is not a valid JSON schema: at $.properties.age.type, 'nonsense' is not valid under any of the given schemas"
    if not dry_run:
        assert refused(ipyllm.SettingError, ipyllm.complete, "name: Ada", schema=BAD_SCHEMA).startswith(words)
    assert refused(ipyllm.SettingError, ipyllm.map, "name: {value}", ["Ada"], schema=BAD_SCHEMA, dry_run=dry_run).startswith(words)
    assert refused(ipyllm.SettingError, ipyllm.map, "name: {value}", ["Ada"], schema={"type": "nonsense"}, dry_run=dry_run).startswith(
        "schema is not a valid JSON schema: at $.type"
    )
    assert refused(ipyllm.SettingError, ipyllm.map, "name: {value}", ["Ada"], schema=Opaque, dry_run=dry_run).startswith(
        "schema Opaque has no JSON schema (PydanticInvalidForJsonSchema"
    )
    nothing_sent(live)
    valid = {**BAD_SCHEMA, "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    result = ipyllm.map("name: {value}", ["Ada"], schema=valid, dry_run=dry_run, progress=False)
    assert isinstance(result, ipyllm.BatchEstimate) if dry_run else result.loc[0, "name"] == "Ada"


def test_the_map_magic_refuses_an_invalid_schema_with_a_usage_error(ip: Any, live: StubServer) -> None:
    ip.user_ns.update(rows=["Ada", "Bo"], Person=BAD_SCHEMA)
    for options in ("--map rows --schema Person --dry-run", "--map rows --schema Person"):
        with pytest.raises(UsageError) as caught:
            ip.run_cell_magic("llm", options, "name: {value}")
        assert type(caught.value) is UsageError, "UsageError itself: IPython prints a subclass with a traceback"
        assert str(caught.value).startswith("schema is not a valid JSON schema: at $.properties.age.type")
    nothing_sent(live)


# -- map data ---------------------------------------------------------------------------------------------


def reviews() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": pd.Series(["good", None, math.nan, pd.NA, "bad", "fine"], dtype=object, index=list("uvwxyz")),
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", None, "2024-01-06"]),
            "unused": [None] * 6,
        },
        index=list("uvwxyz"),
    )


def test_rows_with_a_missing_value_are_not_sent_by_default(live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    frame = reviews()
    result = ipyllm.map("say {text} on {when:%Y-%m-%d}", frame, errors="raise")  # not failures: no BatchError
    assert bodies(live) == ["say fine on 2024-01-06", "say good on 2024-01-01"], "None, NaN, NA and NaT are not sent"
    assert result.notna().tolist() == [True, False, False, False, False, True]
    batch = ipyllm.last_batch()
    assert batch is not None
    assert batch.errors.tolist()[1:5] == ["missing value in {text}"] * 3 + ["missing value in {when}"]
    assert (batch.tally.missing, batch.tally.failed, batch.tally.answered, batch.tally.done) == (4, 0, 2, 6)
    assert batch.failure_message() is None and "4 skipped (missing values)" in batch.summary
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ipyllm: ")]
    assert lines == ['ipyllm: 4 of 6 rows not sent: a missing value in {text} or {when} (missing="send" sends them as text)']
    assert len(_api.session.ledger.rows()) == 2, "no row for a row not sent"


def test_missing_send_sends_them_as_text_and_a_callable_gets_every_row(live: StubServer) -> None:
    series = pd.Series(["a", None, math.nan, pd.NA], name="word", dtype=object)  # as they are, not all NaN
    assert ipyllm.map("say {word}", series, missing="send", progress=False).notna().all()
    assert bodies(live) == ["say <NA>", "say None", "say a", "say nan"]
    live.reset()
    assert ipyllm.map(lambda word: f"callable {word}", series, progress=False).notna().all()
    assert bodies(live) == ["callable <NA>", "callable None", "callable a", "callable nan"]
    live.reset()
    # Only the fields the template uses count: a missing value elsewhere in the row is sent.
    assert ipyllm.map("say {text}", reviews().iloc[[0]], progress=False).notna().all()
    assert bodies(live) == ["say good"]


def test_missing_option_is_checked_and_the_magic_has_it(ip: Any, live: StubServer) -> None:
    assert refused(ipyllm.SettingError, ipyllm.map, "say {value}", ["a"], missing="drop").startswith(
        "missing must be 'skip' (rows with a missing value in a template field are not sent) or 'send'"
    )
    nothing_sent(live)
    ip.user_ns["words"] = ["a", None]
    ip.run_cell_magic("llm", "--map words -o plain", "say {value}")
    assert bodies(live) == ["say a"] and ip.user_ns["plain"].isna().tolist() == [False, True]
    ip.run_cell_magic("llm", "--map words --missing send", "say {value}")
    assert bodies(live) == ["say None", "say a"], "the None row is sent; 'say a' is answered from the first run"
    with pytest.raises(UsageError):
        ip.run_cell_magic("llm", "--map words --missing drop", "say {value}")


@pytest.mark.parametrize("template", ["", "   \n\t "])
def test_an_empty_template_is_refused(live: StubServer, template: str) -> None:
    text = refused(ipyllm.SettingError, ipyllm.map, template, ["a", "b"], progress=False)
    assert text.startswith("the template is empty: write the prompt")
    assert refused(ipyllm.SettingError, lambda: asyncio.run(ipyllm.amap(template, ["a"], progress=False))) == text
    nothing_sent(live)


@pytest.mark.parametrize(("data", "kind"), [(None, "None"), (42, "int"), (3.5, "float"), (object(), "object")])
def test_data_that_is_not_rows_is_refused(live: StubServer, data: Any, kind: str) -> None:
    text = refused(ipyllm.SettingError, ipyllm.map, "say {value}", data, progress=False)
    assert text == f"data must be a DataFrame, a Series, or a list (or other iterable) of strings or dicts, not {kind}"
    nothing_sent(live)
    assert ipyllm.map("say {value}", iter(["a"]), progress=False).tolist() == ["[gpt-4o-mini] say a"]


# -- prices -----------------------------------------------------------------------------------------------


def test_an_unknown_price_alias_is_refused_with_close_matches(live: StubServer) -> None:
    ipyllm.config.prices = {"openai/my-local-model": "gpt-4o-mini"}
    for alias, close in (("gpt-4o-minni", "did you mean 'gpt-4o-mini'"), ("openai/gpt-4o-minni", "did you mean 'openai/gpt-4o-mini'")):
        text = refused(ipyllm.SettingError, setattr, ipyllm.config, "prices", {"openai/my-local-model": alias})
        assert text.startswith(f"prices: litellm has no price for the base model {alias!r} (of 'openai/my-local-model'): {close}"), text
        assert text.endswith("the old value stays.")
    assert "did you mean" not in refused(ipyllm.SettingError, setattr, ipyllm.config, "prices", {"m": "no-such-base-model"})
    # All at once (update holds the notifications, so the check cannot lean on the current value) and from the magic.
    assert "did you mean 'gpt-4o-mini'" in refused(ipyllm.SettingError, ipyllm.config.update, model="gpt-4o", prices={"m": "gpt-4o-minni"})
    assert ipyllm.config.model == "gpt-4o-mini"
    assert ipyllm.config.prices == {"openai/my-local-model": "gpt-4o-mini"}
    nothing_sent(live)
    # The alias kept still prices the model.
    reply = ipyllm.complete("hello", model="openai/my-local-model")
    assert reply.usage.cost_usd > 0 and not math.isnan(reply.usage.cost_usd)


def test_valid_aliases_are_accepted_from_litellms_own_price_map(clean_config: ipyllm.LLMConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_config.prices = {"my-deploy": "gpt-4o-mini", "openai/deploy-b": "openai/gpt-4o", "c": "azure/gpt-4o-mini"}
    litellm = load_litellm()
    # Once litellm is imported its price map answers: a model registered with litellm (not in the bundled file) is accepted.
    monkeypatch.setitem(litellm.model_cost, "registered-only-here", {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6})
    clean_config.prices = {"my-deploy": "registered-only-here"}
    assert clean_config.prices == {"my-deploy": "registered-only-here"}


def test_the_alias_check_does_not_import_litellm(tmp_path: Path) -> None:
    code = """
import json, sys, time
import ipyllm
started = time.perf_counter()
ipyllm.config.prices = {"my-model": "gpt-4o-mini", "openai/other": "openai/gpt-4o"}
first = time.perf_counter() - started
started = time.perf_counter()
ipyllm.config.prices = {"my-model": "gpt-4o-mini", "third": "gpt-4o"}
again = time.perf_counter() - started
try:
    ipyllm.config.prices = {"my-model": "gpt-4o-minni"}
    refusal = None
except ipyllm.SettingError as error:
    refusal = str(error)
print(json.dumps({"first": first, "again": again, "refusal": refusal, "prices": ipyllm.config.prices, "litellm": "litellm" in sys.modules}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=60)
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["litellm"] is False, "the alias check must not import litellm (6-10 s)"
    assert facts["prices"] == {"my-model": "gpt-4o-mini", "third": "gpt-4o"}
    assert facts["refusal"] is not None and "did you mean 'gpt-4o-mini'" in facts["refusal"]
    # The bundled price map is read once (about 50 ms), then kept.
    assert facts["first"] < 1.0 and facts["again"] < 0.05, facts


def test_ipython_shows_each_refusal_in_one_line(ip: Any, live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns.update(BAD_SCHEMA=BAD_SCHEMA)
    cells = {
        "import ipyllm\nipyllm.config.budget = 5": "SettingError: no setting named 'budget': did you mean budget_usd?",
        "ipyllm.config.budget_usd = float('inf')": "SettingError: budget_usd must be a number of US dollars >= 0, and finite",
        "ipyllm.map('say {value}', None)": "SettingError: data must be a DataFrame, a Series, or a list",
        "ipyllm.map('say {value}', ['a'], max_token=5)": "InvalidInputError: map() got the unknown keyword 'max_token'",
        "ipyllm.complete('x', schema=BAD_SCHEMA)": "SettingError: schema is not a valid JSON schema: at $.properties.age.type",
        "ipyllm.config.prices = {'m': 'gpt-4o-minni'}": "SettingError: prices: litellm has no price for the base model 'gpt-4o-minni'",
    }
    for cell, expected in cells.items():
        capsys.readouterr()
        result = ip.run_cell(cell)
        assert result.error_in_exec is not None
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(expected), (cell, lines)
    nothing_sent(live)


# -- prompts, messages, texts to embed, keywords (issue 10) -----------------------------------------------------


BAD_PROMPTS = [
    (None, "the prompt is None: pass a prompt string, or a list of messages"),
    (123, "the prompt is int: pass a prompt string"),
    (b"hello", "the prompt is bytes: decode it first"),
    (["hi"], "message 0 is str 'hi': each message is a dict like {'role': 'user', 'content': 'Hello'}"),
    ({"role": "user", "content": "hi"}, "the prompt is one message (a dict): pass a list of messages"),
    ("", "the prompt is empty"),
    ("   \n", "the prompt is empty"),
    ([], "the list of messages is empty"),
    ([{"role": "user"}], "message 0 (user) has no 'content'"),
    ([{"content": "hi"}], "message 0 has no 'role': give one of system, user, assistant"),
    ([{"role": "wizard", "content": "hi"}], "message 0 has the unknown role 'wizard'"),
    ([{"role": "usr", "content": "hi"}], "unknown role 'usr': did you mean 'user'?"),
    ([{"role": "user", "content": 5}], "message 0 (user) has content of type int"),
    ("caf\udce9.txt", "message 0 (user) cannot be sent as UTF-8: position 3 holds '\\udce9', a lone surrogate"),
    ([{"role": "user", "content": [{"type": "text", "text": "x\ud800"}]}], "message 0 (user), part 0 cannot be sent as UTF-8: position 1"),
]


@pytest.mark.parametrize(("prompt", "words"), BAD_PROMPTS, ids=[repr(p)[:30] for p, _ in BAD_PROMPTS])
def test_bad_prompts_are_refused_before_sending(live: StubServer, prompt: Any, words: str) -> None:
    caught = fails(ipyllm.InvalidInputError, prompt)
    assert words in one_line(caught)
    assert isinstance(caught, TypeError) and isinstance(caught, ValueError) and isinstance(caught, ipyllm.LLMError)
    assert live.requests == [] and _api.session.ledger.rows() == [], "nothing sent, no row"


def test_a_surrogate_in_the_system_prompt_is_found_too(live: StubServer) -> None:
    ipyllm.config.system = "Files: caf\udce9"
    assert "message 0 (system) cannot be sent as UTF-8: position 10" in one_line(fails(ipyllm.InvalidInputError, "hi"))
    assert live.requests == []


BAD_TEXTS = [
    (None, "the texts to embed are None: pass a string, or a list of strings"),
    ([], "nothing to embed (an empty list)"),
    (["ok", 3], "text 1 is int, not a string"),
    (["ok", " "], "text 1 is empty"),
    (b"x", "the texts to embed are bytes"),
    (["caf\udce9"], "text 0 cannot be sent as UTF-8: position 3"),
]


@pytest.mark.parametrize(("texts", "words"), BAD_TEXTS, ids=[repr(t)[:20] for t, _ in BAD_TEXTS])
def test_bad_texts_to_embed_are_refused_before_sending(live: StubServer, texts: Any, words: str) -> None:
    with pytest.raises(ipyllm.InvalidInputError) as caught:
        ipyllm.embed(texts)
    assert words in one_line(caught.value)
    assert live.requests == [] and _api.session.ledger.rows() == []


@pytest.mark.parametrize(
    ("keywords", "words"),
    [
        ({"max_token": 5}, "complete() got the unknown keyword 'max_token': did you mean max_tokens?"),
        ({"temprature": 0.1}, "did you mean temperature?"),
        ({"top_k": 5}, "send provider-specific extras as extra_body={'top_k': ...}"),
        ({"dry_run": True}, "dry_run is not a keyword of complete (it would be sent): use ipyllm.estimate("),
    ],
)
def test_unknown_keywords_are_refused_with_the_close_match(live: StubServer, keywords: dict[str, Any], words: str) -> None:
    assert words in one_line(fails(ipyllm.InvalidInputError, "x", **keywords))
    assert live.requests == [] and _api.session.ledger.rows() == []


def test_embed_checks_its_keywords_against_embeddings(live: StubServer) -> None:
    with pytest.raises(ipyllm.InvalidInputError, match=re.escape("embed() got the unknown keyword 'dimension': did you mean dimensions?")):
        ipyllm.embed("x", dimension=4)
    ipyllm.embed("x", dimensions=4)
    assert live.requests[0].body["dimensions"] == 4


def test_known_keywords_and_extra_body_reach_the_server(live: StubServer) -> None:
    ipyllm.complete("x", top_p=0.5, seed=7, extra_body={"min_p": 0.05, "top_k": 40}, metadata={"run": "a"})
    body = live.requests[0].body
    assert (body["top_p"], body["seed"], body["min_p"], body["top_k"]) == (0.5, 7, 0.05, 40)
    assert "metadata" not in body, "litellm's own arguments stay with litellm"
