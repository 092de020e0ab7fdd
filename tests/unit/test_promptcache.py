"""Prompt caching's policy, plan and estimate (``ipyllm._promptcache``), without a server: which models are marked and
from how many tokens, where the one marker goes, when caching is not asked for, and the estimate's arithmetic."""

from __future__ import annotations

import math

import pytest

import ipyllm
from ipyllm._engine import chat_arguments
from ipyllm._litellm import load_litellm
from ipyllm._promptcache import EPHEMERAL, CachePlan, Policy, Rates, estimate_cache_hits, pays, plan_prompt_cache, policy, rates

LONG = " the cat sat on the mat ." * 300  # about 2,100 tokens


@pytest.mark.parametrize(
    ("model", "provider", "expected"),
    [
        ("gpt-4o-mini", "openai", Policy("key", 1024)),
        ("azure/gpt-4o-mini", "azure", Policy("key", 1024)),
        ("anthropic/claude-sonnet-4-5", "anthropic", Policy("marker", 1024)),
        ("claude-haiku-4-5", "anthropic", Policy("marker", 4096)),  # litellm's map says 4,096
        ("gemini/gemini-2.5-flash", "gemini", Policy("marker", 4096, whole_message=True)),
        ("deepseek/deepseek-chat", "deepseek", Policy("automatic", 1024)),
        ("claude-3-haiku-20240307", "anthropic", Policy(None, 2048)),  # litellm's map: no prompt caching
        ("ollama/llama3", "ollama", Policy(None, 1024)),
    ],
)
def test_policy_from_litellms_map(model: str, provider: str, expected: Policy) -> None:
    load_litellm()
    assert policy(model, provider) == expected


def plan(text: str = "Rules:" + LONG + " Text: ") -> CachePlan:
    return CachePlan("marker", 2000, 1024, text)


def test_one_marker_closes_the_template_prefix_and_the_row_part_follows() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rules:" + LONG + " Text: apple"}]
    marked = plan().marked(messages)
    assert marked[0] == {"role": "system", "content": "Be brief."}
    assert marked[1]["content"] == [
        {"type": "text", "text": "Rules:" + LONG + " Text: ", "cache_control": EPHEMERAL},
        {"type": "text", "text": "apple"},
    ]
    assert messages[1]["content"].endswith("apple"), "the given messages are not changed"


def test_a_blank_row_part_is_left_out_and_gemini_gets_a_message_of_its_own() -> None:
    text = "Rules:" + LONG + " Text: "
    assert plan(text).marked([{"role": "user", "content": text + "  "}])[0]["content"] == [
        {"type": "text", "text": text, "cache_control": EPHEMERAL}
    ]
    gemini = CachePlan("marker", 2000, 4096, text, whole_message=True).marked([{"role": "user", "content": text + "apple"}])
    assert gemini == [
        {"role": "user", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]},
        {"role": "user", "content": "apple"},
    ]


def test_without_template_text_the_system_prompt_is_marked() -> None:
    marked = CachePlan("marker", 2000, 1024).marked([{"role": "system", "content": LONG}, {"role": "user", "content": "apple"}])
    assert marked == [
        {"role": "system", "content": [{"type": "text", "text": LONG, "cache_control": EPHEMERAL}]},
        {"role": "user", "content": "apple"},
    ]


def test_the_callers_own_marker_stands() -> None:
    own = [{"role": "user", "content": [{"type": "text", "text": "Rules:" + LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]
    assert plan().marked(own) is own


def test_the_engine_adds_the_plan_to_litellms_arguments() -> None:
    settings = ipyllm.config.snapshot(model="gpt-4o-mini")
    messages = [{"role": "user", "content": "Rules:" + LONG + " Text: apple"}]
    keyed = chat_arguments(settings, messages, {}, cache=CachePlan("key", 2000, 1024, key="ipyllm-k"))
    assert keyed["prompt_cache_key"] == "ipyllm-k" and keyed["messages"] == messages
    assert (
        chat_arguments(settings, messages, {"prompt_cache_key": "mine"}, cache=CachePlan("key", 2000, 1024, key="ipyllm-k"))[
            "prompt_cache_key"
        ]
        == "mine"
    )
    marked = chat_arguments(settings, messages, {}, cache=plan())
    assert "prompt_cache_key" not in marked and marked["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
    assert (
        "prompt_cache_key" not in chat_arguments(settings, messages, {}) and chat_arguments(settings, messages, {})["messages"] == messages
    )


def test_the_plan_is_one_key_per_prefix_and_none_where_caching_does_not_pay() -> None:
    load_litellm()
    settings = ipyllm.config.snapshot(model="gpt-4o-mini")
    text = "Rules:" + LONG + " Text: "
    shared = [{"role": "user", "content": text}]
    first = plan_prompt_cache(settings, shared, text, 10)
    assert first is not None and first.style == "key" and first.prefix_tokens >= 2000 and first.text == text
    assert plan_prompt_cache(settings, shared, text, 3) == first  # the key depends on the prefix, not on the rows
    other = plan_prompt_cache(settings, [{"role": "user", "content": "Other" + text}], "Other" + text, 10)
    assert other is not None and other.key != first.key
    assert plan_prompt_cache(settings, shared, text, 1) is None
    short = "Rules: be brief. Text: "
    assert plan_prompt_cache(settings, [{"role": "user", "content": short}], short, 10) is None
    assert plan_prompt_cache(ipyllm.config.snapshot(model="ollama/llama3"), shared, text, 10) is None


def test_a_marker_pays_only_when_the_reads_save_more_than_the_write_costs() -> None:
    rule = Policy("marker", 1024)
    steep = rates("claude-sonnet-4-5", rule)
    assert steep is not None and (steep.write, steep.read) == (3.75e-6, 3e-7)
    assert pays(rule, 1500, 2, steep) and not pays(rule, 1000, 40, steep) and not pays(rule, 1500, 1, steep)
    dear = Rates(input=1e-6, output=1e-6, read=0.9e-6, write=2e-6)  # a write twice the input, reads 10 % off
    assert not pays(rule, 1500, 10, dear) and pays(rule, 1500, 12, dear)


def test_the_estimate_for_openai_reads_in_128_token_steps() -> None:
    load_litellm()
    price = load_litellm().model_cost["gpt-4o-mini"]
    estimate = estimate_cache_hits("gpt-4o-mini", "openai", 1500, 20, 10, output_tokens=5)
    assert (estimate.read_tokens, estimate.write_tokens) == (9 * 1408, 0)
    assert estimate.prompt_tokens == 10 * 1520 and estimate.plain_tokens == 10 * 1520 - 9 * 1408
    expected = (10 * 1520 - 9 * 1408) * price["input_cost_per_token"] + 9 * 1408 * price["cache_read_input_token_cost"]
    assert estimate.cached_usd == pytest.approx(expected + 50 * price["output_cost_per_token"])
    assert estimate.list_usd == pytest.approx(10 * 1520 * price["input_cost_per_token"] + 50 * price["output_cost_per_token"])
    assert any("128-token steps" in line for line in estimate.assumptions) and "read from the cache" in str(estimate)


def test_the_estimate_for_anthropic_writes_once_and_reads_the_rest() -> None:
    price = load_litellm().model_cost["claude-sonnet-4-5"]
    estimate = estimate_cache_hits("anthropic/claude-sonnet-4-5", "anthropic", 1500, [10, 20, 30], 3)
    assert (estimate.write_tokens, estimate.read_tokens, estimate.plain_tokens) == (1500, 3000, 60)
    expected = 60 * price["input_cost_per_token"] + 1500 * price["cache_creation_input_token_cost"]
    assert estimate.cached_usd == pytest.approx(expected + 3000 * price["cache_read_input_token_cost"])


def test_the_estimate_says_why_nothing_is_read_and_an_unpriced_model_is_nan() -> None:
    load_litellm()
    under = estimate_cache_hits("anthropic/claude-sonnet-4-5", "anthropic", 900, 10, 40)
    assert under.read_tokens == under.write_tokens == 0 and under.cached_usd == pytest.approx(under.list_usd)
    assert any("under" in line and "1,024" in line for line in under.assumptions)
    one = estimate_cache_hits("gpt-4o-mini", "openai", 1500, 10, 1)
    assert one.read_tokens == 0 and any("one row" in line for line in one.assumptions)
    unknown = estimate_cache_hits("openai/my-local-model", "openai", 1500, 10, 40)
    assert math.isnan(unknown.cached_usd) and math.isnan(unknown.list_usd)
    with pytest.raises(ValueError, match="2 figures for 3 rows"):
        estimate_cache_hits("gpt-4o-mini", "openai", 1500, [1, 2], 3)
