"""Prompt caching in ``ipyllm.map`` over real HTTP through litellm to the stub server: the shared prefix sent first,
OpenAI's automatic cache read after the first row (with one ``prompt_cache_key`` per map), Anthropic's one
``cache_control`` marker (none under the minimum, nor for one row), each row priced at the cache rates of litellm's
map, the saving in ``%llm_usage`` and ``last_batch()``, and the estimate of cache hits against the rows it estimates.

Expected figures are worked out here from the stub's token counts and litellm's price map, not from ipyllm.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

import ipyllm
from ipyllm._batchdata import template_prefix
from ipyllm._litellm import load_litellm
from ipyllm._promptcache import estimate_cache_hits
from ipyllm.testing import StubServer, count_tokens

from ..helpers import chat_requests

#: 1,500 of the stub's tokens (words and marks; tiktoken counts as many), the same before every row.
PREFIX = "Follow these rules ." + " the cat sat on the mat ." * 213 + " Now classify the text :"
#: The stub's tokens that open a message: ``<|start|>``, the role, ``<|sep|>``.
TURN = 3
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "ocean", "piano", "lemon", "forest"]


def frame(rows: int) -> pd.DataFrame:
    """Rows whose values share no first token (else the stub's cache would also read into the row's part)."""
    return pd.DataFrame({"text": [f"{WORDS[i % 10]}{i} item" for i in range(rows)]}, index=[f"r{i}" for i in range(rows)])


def rates(name: str) -> dict[str, float]:
    return load_litellm().model_cost[name]


def mine(batch: Any) -> pd.DataFrame:
    rows = ipyllm.usage()
    return rows[rows["batch"] == batch.id].reset_index(drop=True)


def messages_requests(stub: StubServer) -> list[Any]:
    return [r for r in stub.requests if r.path.endswith("/messages")]


def markers(body: dict[str, Any]) -> list[str]:
    """The text of every block of a Messages API request that carries ``cache_control`` (system included)."""
    found = []
    for blocks in [body.get("system"), *(m.get("content") for m in body.get("messages") or [])]:
        for block in blocks if isinstance(blocks, list) else []:
            if isinstance(block, dict) and "cache_control" in block:
                found.append(block.get("text", ""))
    return found


def test_the_prefix_is_1500_tokens() -> None:
    assert count_tokens(PREFIX) == 1500
    assert load_litellm().token_counter(model="gpt-4o-mini", text=PREFIX) >= 1024  # what ipyllm counts it as


def test_template_prefix_is_the_text_before_the_first_field() -> None:
    assert template_prefix("Rules {{strict}}. Text: {text} and {n}") == "Rules {strict}. Text: "
    assert template_prefix("{text} then rules") == ""
    assert template_prefix("no field at all") == "no field at all"
    assert template_prefix("broken {") == ""


# -- OpenAI: automatic caching ---------------------------------------------------------------------------------


def test_a_40_row_map_reads_the_shared_prefix_after_the_first_row_at_the_cache_read_price(fast: StubServer, ip: Any) -> None:
    fast.prompt_caching = True
    fast.delay = 0.05
    ipyllm.config.update(max_tokens=5)
    data = frame(40)
    result = ipyllm.map(PREFIX + " {text}", data, model="openai/gpt-4o-mini", progress=False)
    assert result.notna().all()
    batch = ipyllm.last_batch()
    rows = mine(batch)
    assert len(rows) == 40 and set(rows["status"]) == {"ok"}

    # The first row is sent alone: the others arrive once it has been answered, and read what it cached.
    requests = sorted(chat_requests(fast), key=lambda r: r.time)
    assert len(requests) == 40
    assert min(r.time for r in requests[1:]) >= requests[0].time + fast.delay - 0.01
    first = rows.iloc[0]
    assert first["prompt_tokens"] == TURN + 1500 + 2 + TURN
    shared = (TURN + 1500) // 128 * 128  # OpenAI's rule, as the stub applies it: 1,408
    assert rows["cached_tokens"].fillna(0).tolist().count(0) == 1  # only the first row sent writes
    assert (rows["cached_tokens"].dropna() == shared).sum() == 39

    # Message order on the wire: the shared prefix first, the row's value last, in the one user message.
    for request in requests:
        (message,) = request.body["messages"]
        assert message["role"] == "user" and message["content"].startswith(PREFIX) and message["content"].endswith(" item")
    # One prompt_cache_key for the whole map.
    keys = {r.body.get("prompt_cache_key") for r in requests}
    assert len(keys) == 1 and next(iter(keys)).startswith("ipyllm-")

    # Each row at litellm's rates: uncached input, cached input at the cache-read price, output.
    price = rates("gpt-4o-mini")
    cached = rows["cached_tokens"].fillna(0).astype(int)
    expected = (rows["prompt_tokens"] - cached) * price["input_cost_per_token"]
    expected += cached * price["cache_read_input_token_cost"] + rows["completion_tokens"] * price["output_cost_per_token"]
    assert rows["cost_usd"].tolist() == pytest.approx(expected.astype(float).tolist(), rel=1e-9)

    # What caching saved: every token at list price, minus what was paid.
    listed = rows["prompt_tokens"] * price["input_cost_per_token"] + rows["completion_tokens"] * price["output_cost_per_token"]
    saved = float((listed.astype(float) - rows["cost_usd"]).sum())
    assert saved == pytest.approx(39 * shared * (price["input_cost_per_token"] - price["cache_read_input_token_cost"]))
    table = ip.run_line_magic("llm_usage", "")
    assert table.loc["openai/gpt-4o-mini", "saved_usd"] == pytest.approx(saved, rel=1e-9)
    assert table.loc["total", "saved_usd"] == pytest.approx(saved, rel=1e-9)
    assert batch.saved_usd == pytest.approx(saved, rel=1e-9)
    assert f"saved ${saved:.4f} against list price" in batch.summary

    # The estimate of cache hits, given the map's own token counts, is what the rows cost.
    estimate = estimate_cache_hits(
        "openai/gpt-4o-mini", "openai", TURN + 1500, (rows["prompt_tokens"] - (TURN + 1500)).tolist(), 40, output_tokens=5
    )
    assert estimate.read_tokens == rows["cached_tokens"].sum() and estimate.write_tokens == 0
    assert estimate.cached_usd == pytest.approx(rows["cost_usd"].sum(), rel=1e-9)
    assert estimate.saved_usd == pytest.approx(saved, rel=1e-9)


def test_no_prompt_cache_key_under_the_minimum_nor_for_one_row(fast: StubServer) -> None:
    fast.prompt_caching = True
    short = " ".join(["the cat sat on the mat ."] * 100)  # 700 tokens
    ipyllm.map(short + " {text}", frame(5), model="openai/gpt-4o-mini", max_tokens=5, progress=False)
    ipyllm.map(PREFIX + " {text}", frame(1), model="openai/gpt-4o-mini", max_tokens=5, progress=False)
    requests = chat_requests(fast)
    assert len(requests) == 6 and all("prompt_cache_key" not in r.body for r in requests)
    # Sent as ever: one user message, a string.
    assert all(isinstance(r.body["messages"][0]["content"], str) for r in requests)


def test_a_row_answered_by_a_one_row_map_is_not_sent_again_by_the_cached_map(fast: StubServer) -> None:
    """The marker and the key change the bill, not the answer: the ledger's cache key does not cover them."""
    fast.prompt_caching = True
    data = frame(6)
    ipyllm.map(PREFIX + " {text}", data.head(1), model="openai/gpt-4o-mini", max_tokens=5, progress=False)
    fast.reset()
    ipyllm.map(PREFIX + " {text}", data, model="openai/gpt-4o-mini", max_tokens=5, progress=False)
    sent = [r.body["messages"][0]["content"] for r in chat_requests(fast)]
    assert len(sent) == 5 and not any(text.endswith(data["text"].iloc[0]) for text in sent)
    assert ipyllm.last_batch().tally.cached == 1


# -- Anthropic: one cache_control marker -------------------------------------------------------------------------


def test_anthropic_requests_carry_one_marker_on_the_shared_prefix(fast: StubServer) -> None:
    ipyllm.config.update(base_url=fast.url, max_tokens=5)  # litellm adds /v1/messages itself
    data = frame(6)
    result = ipyllm.map(PREFIX + " {text}", data, model="anthropic/claude-sonnet-4-5", system="Be brief.", progress=False)
    assert result.notna().all()
    requests = sorted(messages_requests(fast), key=lambda r: r.time)
    assert len(requests) == 6
    values = []
    for request in requests:
        body = request.body
        assert markers(body) == [PREFIX + " "] and request.cache_control_markers == 1, "exactly one marker, on the shared prefix"
        # Shared first: the system prompt, then the prefix block (marked), then the row's value.
        assert [block["text"] for block in body["system"]] == ["Be brief."]
        (message,) = body["messages"]
        assert len(message["content"]) == 2 and message["content"][0]["text"] == PREFIX + " "
        values.append(message["content"][1]["text"])
    assert sorted(values) == sorted(data["text"])
    assert min(r.time for r in requests[1:]) >= requests[0].time  # the first row alone, then the others

    rows = mine(ipyllm.last_batch())
    breakpoint_tokens = TURN + count_tokens("Be brief.") + TURN + 1500  # the system turn and its text, the user turn, the prefix
    # The first row sent writes the prefix; the others read it (none writes again).
    assert rows["cache_creation_tokens"].tolist().count(breakpoint_tokens) == 1
    assert rows["cache_creation_tokens"].fillna(0).sum() == breakpoint_tokens
    assert (rows["cached_tokens"] == breakpoint_tokens).sum() == 5
    price = rates("claude-sonnet-4-5")
    written, read = rows["cache_creation_tokens"].fillna(0), rows["cached_tokens"].fillna(0)
    plain = rows["prompt_tokens"] - written - read
    expected = plain * price["input_cost_per_token"] + written * price["cache_creation_input_token_cost"]
    expected += read * price["cache_read_input_token_cost"] + rows["completion_tokens"] * price["output_cost_per_token"]
    assert rows["cost_usd"].tolist() == pytest.approx(expected.astype(float).tolist(), rel=1e-9)

    estimate = estimate_cache_hits(
        "anthropic/claude-sonnet-4-5", "anthropic", breakpoint_tokens, (rows["prompt_tokens"] - breakpoint_tokens).tolist(), 6, 5
    )
    assert (estimate.write_tokens, estimate.read_tokens) == (breakpoint_tokens, 5 * breakpoint_tokens)
    assert estimate.cached_usd == pytest.approx(rows["cost_usd"].sum(), rel=1e-9)


def test_a_template_that_begins_with_its_field_marks_the_system_prompt(fast: StubServer) -> None:
    ipyllm.config.update(base_url=fast.url, max_tokens=5)
    ipyllm.map("{text}", frame(3), model="anthropic/claude-sonnet-4-5", system=PREFIX, progress=False)
    requests = messages_requests(fast)
    assert len(requests) == 3
    for request in requests:
        assert markers(request.body) == [PREFIX]
        assert isinstance(request.body["system"], list) and request.body["system"][0]["text"] == PREFIX


@pytest.mark.parametrize(
    ("model", "prefix", "rows"),
    [
        ("anthropic/claude-sonnet-4-5", " ".join(["the cat sat on the mat ."] * 100), 4),  # 700 tokens, under 1,024
        ("anthropic/claude-sonnet-4-5", PREFIX, 1),  # one row: a write with nothing to read it
        ("anthropic/claude-haiku-4-5", PREFIX, 4),  # litellm's map: Haiku 4.5 caches from 4,096 tokens
    ],
    ids=["under-the-minimum", "one-row", "haiku-minimum"],
)
def test_no_marker_where_it_would_cost_more_than_it_saves(fast: StubServer, model: str, prefix: str, rows: int) -> None:
    ipyllm.config.update(base_url=fast.url, max_tokens=5)
    ipyllm.map(prefix + " {text}", frame(rows), model=model, progress=False)
    requests = messages_requests(fast)
    assert len(requests) == rows
    for request in requests:
        assert markers(request.body) == [] and request.cache_control_markers == 0
    rows_ = ipyllm.usage()
    assert rows_["cache_creation_tokens"].fillna(0).sum() == 0 and rows_["cached_tokens"].fillna(0).sum() == 0
