"""Accounting over real HTTP to the stub server: where each row's tokens came from, what they cost, and
one request per attempt for embeddings too.

Expected prices are computed here from ``litellm.model_cost``, never from ipyllm's own pricing.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api
from ipyllm._batchcost import BatchPricer, batch_price
from ipyllm._cost import price
from ipyllm._display import footer
from ipyllm._litellm import load_litellm
from ipyllm._usage import UsageRow
from ipyllm.testing import Fault, StubServer, count_tokens

from ..conftest import SleepRecorder

PROMPT = "Count these tokens, please: one, two, three."


def rates(model: str = "gpt-4o-mini") -> dict[str, float]:
    return load_litellm().model_cost[model]


def stub_usage(messages: list[dict[str, str]], reply: str) -> tuple[int, int]:
    """The stub server's own counts: each message's words and marks plus 3, plus 3; the reply's words and marks."""
    return sum(count_tokens(m["content"]) + 3 for m in messages) + 3, count_tokens(reply)


def local_counts(model: str, messages: list[dict[str, str]], reply: str) -> tuple[int, int]:
    litellm = load_litellm()
    return litellm.token_counter(model=model, messages=messages), litellm.token_counter(model=model, text=reply, count_response_tokens=True)


def by_hand(prompt: int, completion: int, cached: int = 0, model: str = "gpt-4o-mini") -> float:
    price = rates(model)
    return (
        (prompt - cached) * price["input_cost_per_token"]
        + cached * price["cache_read_input_token_cost"]
        + completion * price["output_cost_per_token"]
    )


# -- where the tokens came from -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_providers_usage_is_recorded_as_reported(live: StubServer, stream: bool) -> None:
    reply = ipyllm.complete(PROMPT, stream=stream)
    row = reply.usage
    prompt, completion = stub_usage(reply.messages, str(reply))
    assert (prompt, completion) != local_counts("gpt-4o-mini", reply.messages, str(reply)), "the test must tell the two counts apart"
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (prompt, completion, prompt + completion)
    assert row.tokens_estimated is False
    assert row.cost_usd == pytest.approx(by_hand(prompt, completion))
    if stream:
        assert live.requests[0].body["stream_options"] == {"include_usage": True}, "usage is still asked for"


def test_a_stream_without_usage_is_counted_locally_and_flagged(live: StubServer) -> None:
    live.usage_in_stream = False
    reply = ipyllm.complete(PROMPT, stream=True)
    row = reply.usage
    assert live.requests[0].body["stream_options"] == {"include_usage": True}
    prompt, completion = local_counts("gpt-4o-mini", reply.messages, str(reply))
    assert (row.prompt_tokens, row.completion_tokens) == (prompt, completion), "litellm's local count, not the stub's"
    assert row.tokens_estimated is True and row.cached_tokens is None
    assert row.cost_usd == pytest.approx(by_hand(prompt, completion))
    assert footer(row).startswith(f"gpt-4o-mini · ~{prompt}→{completion} tokens · ~$0.0000")


def test_a_plain_reply_without_usage_is_counted_locally_not_free(live: StubServer) -> None:
    live.report_usage = False
    reply = ipyllm.complete(PROMPT)
    row = reply.usage
    prompt, completion = local_counts("gpt-4o-mini", reply.messages, str(reply))
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (prompt, completion, True)
    assert row.cost_usd == pytest.approx(by_hand(prompt, completion)) and row.cost_usd > 0


def test_a_broken_stream_is_counted_locally_and_flagged(live: StubServer) -> None:
    live.script(Fault.break_stream(after_chunks=3))
    with pytest.raises(ipyllm.StreamBrokenError) as caught:
        ipyllm.complete(PROMPT, stream=True)
    row = caught.value.usage
    assert row.status == "error" and row.tokens_estimated is True
    assert row.completion_tokens is not None and row.completion_tokens > 0 and row.cost_usd > 0


@pytest.mark.parametrize("report_usage", [True, False], ids=["with-usage", "without-usage"])
def test_embeddings_say_where_their_tokens_came_from(live: StubServer, report_usage: bool) -> None:
    live.report_usage = report_usage
    texts = ["first text, with a comma", "second"]
    row = ipyllm.embed(texts).usage
    litellm = load_litellm()
    if report_usage:
        expected = sum(count_tokens(text) for text in texts)
    else:
        expected = sum(litellm.token_counter(model="text-embedding-3-small", text=text) for text in texts)
    assert (row.prompt_tokens, row.tokens_estimated) == (expected, not report_usage)
    assert row.cost_usd == pytest.approx(expected * rates("text-embedding-3-small")["input_cost_per_token"])


def test_the_footer_marks_estimated_counts_and_their_cost() -> None:
    row = UsageRow(model="gpt-4o-mini", prompt_tokens=26, completion_tokens=10, cost_usd=0.0000099, latency_s=0.4, tokens_estimated=True)
    assert footer(row) == "gpt-4o-mini · ~26→10 tokens · ~$0.0000099 · 0.4 s · 1 attempt"
    row.tokens_estimated = False
    assert footer(row) == "gpt-4o-mini · 26→10 tokens · $0.0000099 · 0.4 s · 1 attempt"
    row.cost_usd, row.tokens_estimated = math.nan, True
    assert "· cost unknown ·" in footer(row), "an unknown cost is not marked as an estimate of something"


def test_the_footer_counts_the_images_sent_after_the_tokens() -> None:
    row = UsageRow(model="gpt-4o", prompt_tokens=800, completion_tokens=20, cost_usd=0.0022, latency_s=1.2, images=1)
    assert footer(row) == "gpt-4o · 800→20 tokens · 1 image · $0.0022 · 1.2 s · 1 attempt"
    row.images = 3
    assert footer(row) == "gpt-4o · 800→20 tokens · 3 images · $0.0022 · 1.2 s · 1 attempt"
    for nothing in (0, None):
        row.images = nothing
        assert "image" not in footer(row)
    row.prompt_tokens, row.images = None, 2
    assert footer(row).startswith("gpt-4o · 2 images · $0.0022")


def test_the_magic_footer_is_marked_when_the_stream_had_no_usage(ip: Any, live: StubServer) -> None:
    live.usage_in_stream = False
    with capture_output() as captured:
        ip.run_cell_magic("llm", "", "hello there")
    shown = captured.outputs[-1].data["text/markdown"]
    row = _api.session.ledger.rows()[-1]
    assert f"~{row.prompt_tokens}→{row.completion_tokens} tokens · ~$" in shown


def test_the_frame_and_the_ledger_file_keep_the_flag_and_cached_tokens(live: StubServer, tmp_path: Any) -> None:
    ipyllm.config.usage_db = str(tmp_path / "usage.sqlite")
    live.cached_tokens = 4
    ipyllm.complete(PROMPT)
    live.cached_tokens, live.usage_in_stream = 0, False
    ipyllm.complete(PROMPT, stream=True)
    mine = ipyllm.usage()
    assert str(mine["tokens_estimated"].dtype) == "boolean" and str(mine["cached_tokens"].dtype) == "Int64"
    assert mine["tokens_estimated"].tolist() == [False, True]
    assert mine["cached_tokens"].tolist()[0] == 4 and mine["cached_tokens"].isna().tolist() == [False, True]
    stored = _api.session.store().frame()  # read back from the file
    assert stored["tokens_estimated"].tolist() == [False, True] and stored["cached_tokens"].tolist()[0] == 4


# -- what it cost ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_cached_prompt_tokens_are_priced_at_the_cached_rate(live: StubServer, stream: bool) -> None:
    live.cached_tokens = 8
    reply = ipyllm.complete(PROMPT, stream=stream)
    row = reply.usage
    prompt, completion = stub_usage(reply.messages, str(reply))
    price = rates()
    assert price["cache_read_input_token_cost"] < price["input_cost_per_token"], "gpt-4o-mini has a cached rate"
    expected = (
        (prompt - 8) * price["input_cost_per_token"]
        + 8 * price["cache_read_input_token_cost"]
        + completion * price["output_cost_per_token"]
    )
    assert row.cached_tokens == 8 and row.tokens_estimated is False
    assert row.cost_usd == pytest.approx(expected, rel=1e-9)
    assert row.cost_usd < by_hand(prompt, completion), "cheaper than full-price input"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_anthropic_cache_writes_and_reads_are_priced_at_their_rates(live: StubServer, stream: bool) -> None:
    """The stub's Messages API reports what a ``cache_control`` block wrote and then read; litellm's rates price both."""
    ipyllm.config.update(base_url=live.url, max_tokens=5)
    shared = "the cat sat on the mat ." * 200  # 1,400 tokens
    rows = []
    for value in ("apple", "river"):
        messages = [
            {
                "role": "user",
                "content": [{"type": "text", "text": shared, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": value}],
            }
        ]
        rows.append(ipyllm.complete(messages, model="anthropic/claude-sonnet-4-5", stream=stream).usage)
    written = 3 + count_tokens(shared)  # the user turn's 3 tokens and the marked block
    assert (rows[0].cache_creation_tokens, rows[0].cached_tokens) == (written, 0)
    assert (rows[1].cache_creation_tokens, rows[1].cached_tokens) == (0, written)
    price = rates("claude-sonnet-4-5")
    for row, (write, read) in zip(rows, [(written, 0), (0, written)], strict=True):
        assert row.prompt_tokens == written + 1 + 3  # the value's token and the 3 that open the reply, at the input rate
        expected = (row.prompt_tokens - write - read) * price["input_cost_per_token"] + write * price["cache_creation_input_token_cost"]
        expected += read * price["cache_read_input_token_cost"] + row.completion_tokens * price["output_cost_per_token"]
        assert row.cost_usd == pytest.approx(expected, rel=1e-9)


def test_price_reads_cache_writes_and_reads_from_a_usage_object() -> None:
    """What ``call_cost`` falls back on when litellm gave no price with the response: the usage, as litellm converts it."""
    settings = ipyllm.config.snapshot()
    anthropic, openai = rates("claude-sonnet-4-5"), rates()
    usage = {"prompt_tokens": 1510, "completion_tokens": 5, "total_tokens": 1515, "cache_creation_input_tokens": 1500}
    expected = (
        10 * anthropic["input_cost_per_token"]
        + 1500 * anthropic["cache_creation_input_token_cost"]
        + 5 * anthropic["output_cost_per_token"]
    )
    assert price(settings, "anthropic/claude-sonnet-4-5", "anthropic", 1510, 5, usage=usage) == pytest.approx(expected, rel=1e-9)
    usage = {"prompt_tokens": 1510, "completion_tokens": 5, "total_tokens": 1515, "prompt_tokens_details": {"cached_tokens": 1408}}
    expected = 102 * openai["input_cost_per_token"] + 1408 * openai["cache_read_input_token_cost"] + 5 * openai["output_cost_per_token"]
    assert price(settings, "gpt-4o-mini", "openai", 1510, 5, usage=usage) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("modes", "expected"),
    [({"usage_cost": 0.0123}, 0.0123), ({"cost_header": 0.0456}, 0.0456), ({"usage_cost": 0.0123, "cost_header": 0.0456}, 0.0456)],
    ids=["usage.cost", "header", "both"],
)
def test_a_cost_the_provider_or_proxy_reports_is_preferred(
    live: StubServer, stream: bool, modes: dict[str, float], expected: float
) -> None:
    for name, value in modes.items():
        setattr(live, name, value)
    assert ipyllm.complete(PROMPT, stream=stream).usage.cost_usd == pytest.approx(expected)


def test_a_reported_cost_stands_even_when_the_tokens_are_counted(live: StubServer) -> None:
    live.usage_in_stream, live.cost_header = False, 0.0456
    row = ipyllm.complete(PROMPT, stream=True).usage
    assert row.tokens_estimated is True and row.cost_usd == pytest.approx(0.0456)


def test_per_token_prices_still_apply(live: StubServer) -> None:
    live.cached_tokens = 8
    ipyllm.config.prices = {"gpt-4o-mini": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}
    reply = ipyllm.complete(PROMPT)
    prompt, completion = stub_usage(reply.messages, str(reply))
    assert reply.usage.cost_usd == pytest.approx(prompt * 1e-6 + completion * 2e-6), "no cached rate given: all input at 1e-6"


def test_a_base_model_price_applies_to_the_whole_usage(live: StubServer) -> None:
    live.cached_tokens = 8
    ipyllm.config.prices = {"openai/my-deployment": "gpt-4o-mini"}
    reply = ipyllm.complete(PROMPT, model="openai/my-deployment")
    prompt, completion = stub_usage(reply.messages, str(reply))
    assert reply.usage.cost_usd == pytest.approx(by_hand(prompt, completion, cached=8))


def test_an_unpriced_model_costs_nan_not_zero(live: StubServer) -> None:
    row = ipyllm.complete(PROMPT, model="openai/stub-local").usage
    assert row.tokens_estimated is False and math.isnan(row.cost_usd)


# -- one attempt, one request ---------------------------------------------------------------------------


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
def test_an_embedding_attempt_is_one_request(live: StubServer, sleeps: SleepRecorder, azure: bool) -> None:
    if azure:
        ipyllm.config.update(base_url=live.url, embedding_deployment="embed-prod", api_version="2024-02-01")
    live.script(Fault.status(503))
    vectors = ipyllm.embed(["hello"])
    assert len(live.requests) == 2, "a 503 and the answer: two requests, no hidden retries"
    assert vectors.usage.attempts == 2 and vectors.usage.status == "ok" and len(sleeps.waits) == 1


def test_a_failing_embedding_sends_one_request_per_attempt(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.num_retries = 1
    live.script(*[Fault.status(503)] * 6)
    with pytest.raises(ipyllm.ProviderUnavailableError) as caught:
        ipyllm.embed(["hello"])
    assert len(live.requests) == 2 and caught.value.usage.attempts == 2
    assert live.pending_faults == 4


# -- estimates ------------------------------------------------------------------------------------------


def test_estimate_returns_what_a_call_would_cost(live: StubServer) -> None:
    litellm = load_litellm()
    price = rates()
    messages = [{"role": "user", "content": PROMPT}]
    tokens = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    guess = ipyllm.estimate(PROMPT)
    assert (guess.model, guess.provider, guess.prompt_tokens, guess.max_tokens) == ("gpt-4o-mini", "openai", tokens, None)
    assert guess.input_cost == pytest.approx(tokens * price["input_cost_per_token"])
    assert guess.output_cost_per_token == pytest.approx(price["output_cost_per_token"])
    # max_tokens unset: the most the call may bill is the model's own maximum output (16,384 for gpt-4o-mini).
    assert guess.model_max_output == litellm.model_cost["gpt-4o-mini"]["max_output_tokens"] == 16_384
    assert guess.output_tokens == 16_384 and guess.total == pytest.approx(guess.input_cost + 16_384 * price["output_cost_per_token"])
    bounded = ipyllm.estimate(messages, max_tokens=100, model="gpt-4o")
    assert bounded.output_tokens == 100
    assert bounded.total == pytest.approx(tokens * rates("gpt-4o")["input_cost_per_token"] + 100 * rates("gpt-4o")["output_cost_per_token"])
    assert live.requests == [] and _api.session.ledger.rows() == [], "nothing sent, nothing recorded"
    shown = repr(guess)
    assert "\n" not in shown and shown.startswith("Estimate(gpt-4o-mini (openai): input $")
    assert "output $0.60 per 1M tokens, at most $0.0098 for 16,384 tokens (the model's maximum; max_tokens unset)" in shown


def test_estimate_of_an_unpriced_model_says_so(live: StubServer) -> None:
    guess = ipyllm.estimate("hello", model="openai/stub-local")
    assert math.isnan(guess.input_cost) and math.isnan(guess.total)
    assert repr(guess).endswith("input price unknown (8 tokens) · output price unknown)")


def test_estimate_refuses_a_bad_override(live: StubServer) -> None:
    with pytest.raises(ipyllm.SettingError, match="max_tokens"):
        ipyllm.estimate("hello", max_tokens=-1)


def test_the_dry_run_line_gives_a_total_and_a_rate(ip: Any, live: StubServer) -> None:
    price = rates()
    assert (price["input_cost_per_token"], price["output_cost_per_token"]) == (1.5e-07, 6e-07), "the figures below are for these prices"
    with capture_output() as captured:
        ip.run_cell_magic("llm", "--dry-run", "hello")
    line = captured.outputs[-1].data["text/plain"].splitlines()[-1]
    # 8 tokens at $0.15 per 1M is $0.0000012; the model's 16,384 output tokens at $0.60 per 1M at most $0.0098.
    assert load_litellm().token_counter(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]) == 8
    assert line == (
        "dry run, nothing sent · gpt-4o-mini (openai) · input $0.0000012 (8 tokens) · "
        "output $0.60 per 1M tokens, at most $0.0098 for 16,384 tokens (the model's maximum; max_tokens unset)"
    )
    with capture_output() as captured:
        ip.run_cell_magic("llm", "--dry-run --max-tokens 200", "hello")
    # 200 tokens at $0.60 per 1M: $0.00012.
    assert captured.outputs[-1].data["text/plain"].endswith("at most $0.00012 for 200 tokens (max_tokens)")
    assert live.requests == []


# -- the batch price -----------------------------------------------------------------------------------------------
def test_the_batch_price_is_litellms_batch_rate_or_half_the_live_price_where_documented(clean_config: ipyllm.LLMConfig) -> None:
    costs = load_litellm().model_cost
    settings = clean_config.snapshot()
    mini = costs["gpt-4o-mini"]
    priced = batch_price(settings, "gpt-4o-mini", "openai", 1000, 100)
    assert priced.basis == "batch"
    assert priced.usd == pytest.approx(1000 * mini["input_cost_per_token_batches"] + 100 * mini["output_cost_per_token_batches"])
    # A model of a provider that documents 50 %, without a batch rate in litellm's map: half its live price.
    model = next(
        name
        for name, info in costs.items()
        if info.get("litellm_provider") == "anthropic" and "input_cost_per_token_batches" not in info and info.get("input_cost_per_token")
    )
    half = batch_price(settings, model, "anthropic", 1000, 100)
    live = costs[model]["input_cost_per_token"] * 1000 + costs[model]["output_cost_per_token"] * 100
    assert half.basis == "half" and half.usd == pytest.approx(live / 2) and "50 %" in half.note
    # Prices of the session's own: halved where the provider documents it.
    clean_config.prices = {"my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}
    own = batch_price(clean_config.snapshot(), "my-model", "openai", 1000, 100)
    assert own.basis == "half" and own.usd == pytest.approx((1000e-6 + 200e-6) / 2)
    unknown = batch_price(settings, "no-such-model-at-all", None, 10, 10)
    assert unknown.basis == "unknown" and unknown.usd != unknown.usd


def random_usage(rng: random.Random, prompt: int) -> dict[str, Any]:
    """A usage as a provider's batch output reports it: OpenAI's cached tokens in the details, Anthropic's cache reads
    and writes beside the counts, or none."""
    completion = rng.randrange(0, 4000)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    shape = rng.randrange(3)
    if shape == 1:
        usage["prompt_tokens_details"] = {"cached_tokens": rng.randrange(0, prompt + 1), "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": rng.randrange(0, completion + 1)}
    elif shape == 2:
        read = rng.randrange(0, prompt + 1)
        usage["cache_read_input_tokens"] = read
        usage["cache_creation_input_tokens"] = rng.randrange(0, prompt - read + 1)
    return usage


@pytest.mark.parametrize(
    ("model", "provider", "fast"),
    [
        ("gpt-4o-mini", "openai", True),  # batch rates, a cache-read rate
        ("claude-sonnet-4-5", "anthropic", True),  # batch rates for cache reads and writes
        ("mistral/mistral-large-latest", "mistral", True),  # no batch rate: the live rates halved
        ("gemini/gemini-2.5-pro", "gemini", False),  # tiered above 200k prompt tokens: litellm row by row
    ],
)
def test_batch_rates_price_each_usage_as_litellms_batch_cost_calculator(
    clean_config: ipyllm.LLMConfig, model: str, provider: str, fast: bool
) -> None:
    litellm = load_litellm()
    settings = clean_config.snapshot()
    pricer = BatchPricer(settings, model, provider)
    assert (pricer.rates is not None) is fast
    rng = random.Random(19)
    for _ in range(400):
        prompt = rng.choice([rng.randrange(0, 5000), rng.randrange(150_000, 260_000)])
        usage = random_usage(rng, prompt)
        completion = usage["completion_tokens"]
        expected = batch_price(settings, model, provider, prompt, completion, usage)
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, custom_llm_provider=provider, usage_object=litellm.Usage(**usage), call_type="retrieve_batch"
        )
        assert expected.usd == pytest.approx(prompt_cost + completion_cost, rel=1e-12)
        assert pricer(prompt, completion, usage) == pytest.approx(expected.usd, rel=1e-12, abs=0), usage
    # Only the rows litellm had to price are kept, by usage: none where the rates price every row.
    assert (len(pricer.priced) == 0) is fast


def test_the_batch_pricer_honours_the_sessions_prices_and_prices_other_tokens_through_litellm(clean_config: ipyllm.LLMConfig) -> None:
    usage = {"prompt_tokens": 1200, "completion_tokens": 80, "prompt_tokens_details": {"cached_tokens": 200}}
    # Per-token prices of the session's own: as batch_price prices them (halved where the provider documents 50 %).
    clean_config.prices = {"my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}, "my-alias": "gpt-4o-mini"}
    settings = clean_config.snapshot()
    own = BatchPricer(settings, "my-model", "openai")
    assert own.rates is None
    assert own(1200, 80, usage) == pytest.approx(batch_price(settings, "my-model", "openai", 1200, 80, usage).usd) == (1200e-6 + 160e-6) / 2
    # An alias: the aliased model's rates.
    alias = BatchPricer(settings, "my-alias", "openai")
    assert alias.rates is not None
    assert alias(1200, 80, usage) == pytest.approx(batch_price(settings, "my-alias", "openai", 1200, 80, usage).usd)
    # Audio tokens: not the rates' to price, litellm's figure.
    mini = BatchPricer(settings, "gpt-4o-mini", "openai")
    audio = {"prompt_tokens": 1200, "completion_tokens": 80, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 300}}
    assert mini(1200, 80, audio) == batch_price(settings, "gpt-4o-mini", "openai", 1200, 80, audio).usd
    assert len(mini.priced) == 1
