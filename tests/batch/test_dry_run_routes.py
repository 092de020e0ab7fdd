"""``map(..., dry_run=True)`` prices the rows three ways before anything is sent (live at list price, live with the
expected prompt-cache hits, batch), and the figures hold: real runs of each route, over real HTTP through litellm to
the stub, cost within the stated bounds. Under a budget the dry run names the route that fits."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

import ipyllm
from ipyllm.testing import StubServer

from ..helpers import chat_requests
from .test_prompt_caching import PREFIX, frame

MODEL = "openai/gpt-4o-mini"
#: The estimate counts tokens with tiktoken, the stub with its own rule: they agree on this data to within this.
SLACK = 0.02


@pytest.fixture
def stub(live: StubServer, clean_config: ipyllm.LLMConfig) -> StubServer:
    live.prompt_caching = True
    clean_config.update(max_tokens=5, batch_poll_min_wait=0.01, batch_poll_max_wait=0.05, retry_min_wait=0.05, retry_max_wait=3)
    return live


def run_rows(batch: Any) -> pd.DataFrame:
    rows = ipyllm.usage()
    return rows[rows["batch"].isin([batch.id, *getattr(batch, "provider_batches", [])])]


def within(amount: float, low: float, high: float) -> bool:
    return low * (1 - SLACK) <= amount <= high * (1 + SLACK)


def test_the_dry_run_prices_three_routes_and_real_runs_of_each_fall_within_them(stub: StubServer) -> None:
    data = frame(40)
    template = PREFIX + " {text}"
    guess = ipyllm.map(template, data, model=MODEL, dry_run=True)
    assert chat_requests(stub) == [] and stub.requests_to("/v1/files") == []
    live, cached, batch = (guess.route(key) for key in ("live", "cached", "batch"))
    text = str(guess)
    assert [line.split(":")[0].strip() for line in text.splitlines()[1:4]] == ["live, list price", "live, with cache hits", "batch"]
    assert "read from the cache" in text and "litellm's batch prices" in text and "within 24 h" in text and "concurrency 8" in text
    # The routes' own arithmetic: gpt-4o-mini's batch price is half its list price; cache reads save on input only.
    assert batch.low_usd == pytest.approx(live.low_usd / 2) and batch.high_usd == pytest.approx(live.high_usd / 2)
    assert live.low_usd > cached.low_usd > batch.low_usd and cached.high_usd - cached.low_usd == pytest.approx(live.high_usd - live.low_usd)

    # Live with the cache: what the rows cost, and what they would have cost at list price (cost + saved).
    ipyllm.map(template, data, model=MODEL, progress=False)
    rows = run_rows(ipyllm.last_batch())
    assert len(rows) == 40 and rows["cached_tokens"].iloc[1:].gt(0).all()
    assert abs(int(rows["prompt_tokens"].sum()) - guess.prompt_tokens) <= SLACK * guess.prompt_tokens
    assert within(float(rows["cost_usd"].sum()), cached.low_usd, cached.high_usd)
    assert within(float(rows["cost_usd"].sum() + ipyllm.last_batch().saved_usd), live.low_usd, live.high_usd)

    # Batch: other rows (the cache would answer these), the same sizes.
    others = data.assign(text=data["text"] + " again")
    again = ipyllm.map(template, others, model=MODEL, dry_run=True).route("batch")
    ipyllm.map(template, others, model=MODEL, via="batch", progress=False)
    rows = ipyllm.usage()
    billed = rows[rows["tier"] == "batch"]
    assert len(billed) == 40 and within(float(billed["cost_usd"].sum()), again.low_usd, again.high_usd)


def test_under_a_budget_the_dry_run_names_the_route_that_fits(stub: StubServer) -> None:
    data = frame(40)
    template = PREFIX + " {text}"
    guess = ipyllm.map(template, data, model=MODEL, dry_run=True)
    assert guess.room is None and guess.fits == ["live", "cached", "batch"]
    between = (guess.route("batch").high_usd + guess.route("cached").high_usd) / 2
    ipyllm.config.budget_usd = between
    tight = ipyllm.map(template, data, model=MODEL, dry_run=True)
    assert tight.fits == ["batch"] and tight.room is not None and tight.room.left == pytest.approx(between)
    assert f"budget: {ipyllm._budget.usd(between)} left of budget_usd" in str(tight) and str(tight).endswith("fits batch")
    ipyllm.config.budget_usd = guess.route("batch").high_usd / 2
    none = str(ipyllm.map(template, data, model=MODEL, dry_run=True))
    assert "no route fits its worst case" in none and "batch needs" in none
    assert chat_requests(stub) == [] and stub.requests_to("/v1/files") == []
    assert not math.isnan(guess.route("cached").high_usd)
