"""Spending limits and the response cache, over real HTTP to the stub server."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api
from ipyllm._budget import usd
from ipyllm._litellm import load_litellm
from ipyllm._locations import default_usage_db
from ipyllm._sqlite import SQLiteStore
from ipyllm._usage import UsageRow
from ipyllm.testing import StubServer, count_tokens

# Amounts to a hundredth of a cent; below that, two significant digits ($0.0000066).
USD = r"\$(\d+\.\d{4}|0\.0000\d{2,3}|\d+\.\d{2})"
BUDGET_LINE = re.compile(
    rf"^budget: spent {USD}(, {USD} held by \d+ calls? in flight,)? of {USD} (this session|today); "
    rf"this call needs at least {USD} \(its input( and \d+ output tokens?)?\): raise \w+ to go on$"
)


def test_a_session_budget_refuses_the_call_that_could_pass_it(live: StubServer) -> None:
    first = ipyllm.complete("first call", max_tokens=10)
    # Room for what was spent, not for another call's prompt and 16 output tokens ($0.0000096 at $0.60 per million).
    ipyllm.config.budget_usd = first.usage.cost_usd + 0.000005
    with pytest.raises(ipyllm.BudgetExceededError) as caught:
        ipyllm.complete("second call")
    assert BUDGET_LINE.match(caught.value.message), caught.value.message
    assert "this session" in caught.value.message
    assert len(live.requests) == 1, "nothing was sent"
    row = caught.value.usage
    assert (row.status, row.attempts, row.cost_usd) == ("over_budget", 0, 0.0)
    assert list(ipyllm.usage()["status"]) == ["ok", "over_budget"]
    assert "this call needs at least $0.0000" in caught.value.message and "(its input and 16 output tokens)" in caught.value.message
    # A small max_tokens fits the remaining room: sent as asked.
    assert ipyllm.complete("third", max_tokens=5).usage.status == "ok"
    assert live.requests[-1].body["max_tokens"] == 5


def test_a_max_tokens_that_does_not_fit_is_lowered_to_what_the_budget_can_pay(live: StubServer) -> None:
    ipyllm.config.update(budget_usd=0.001, max_tokens=100)
    fits = ipyllm.complete("fits")
    assert live.requests[-1].body["max_tokens"] == 100, "a user's max_tokens that fits stays"
    assert fits.cut is None
    ipyllm.config.max_tokens = 10_000  # 10,000 * $0.60 per million = $0.006 > $0.001
    lowered = ipyllm.complete("does not fit")
    guess = ipyllm.estimate("does not fit")
    left = 0.001 - fits.usage.cost_usd - guess.input_cost * 1.1
    assert live.requests[-1].body["max_tokens"] == int(left / guess.output_cost_per_token)
    assert lowered.usage.status == "ok" and ipyllm.usage()["cost_usd"].sum() <= 0.001


@pytest.fixture
def local_noon() -> Iterator[datetime]:
    """A fixed local timezone in which it is now about noon, and that is not UTC.

    So local midnight is neither 24 hours ago nor UTC's midnight, whenever the test runs.
    """
    utc_hour = datetime.now(timezone.utc).hour
    offset = 12 - utc_hour if utc_hour != 12 else 1  # hours east of UTC, -11 to +12
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("TZ", f"IPYLLMTEST{-offset:+d}")  # POSIX TZ counts hours west of UTC
    time.tzset()
    try:
        now = datetime.now().astimezone()
        assert now.utcoffset() == timedelta(hours=offset) and 6 <= now.hour <= 18
        yield now
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_daily_budget_counts_every_session_since_local_midnight(live: StubServer, local_noon: datetime) -> None:
    midnight = local_noon.replace(hour=0, minute=0, second=0, microsecond=0)
    store = SQLiteStore(default_usage_db())
    # Another kernel: yesterday evening (does not count), just after midnight (counts), two days ago (does not).
    store.append(UsageRow(timestamp=midnight - timedelta(minutes=30), session="another-kernel", model="gpt-4o", cost_usd=100.0))
    store.append(UsageRow(timestamp=midnight + timedelta(minutes=10), session="another-kernel", model="gpt-4o", cost_usd=0.30))
    store.append(UsageRow(timestamp=midnight - timedelta(days=2), session="another-kernel", model="gpt-4o", cost_usd=100.0))
    # This session's own rows (in memory and, as every finished call's row, in the ledger): the same rule.
    for row in (
        UsageRow(timestamp=midnight - timedelta(minutes=1), session=ipyllm.SESSION_ID, cost_usd=50.0),
        UsageRow(timestamp=midnight + timedelta(seconds=1), session=ipyllm.SESSION_ID, cost_usd=0.10),
    ):
        store.append(row)
        _api.session.ledger.append(row)
    store.close()
    ipyllm.config.daily_budget_usd = 0.40
    with pytest.raises(ipyllm.BudgetExceededError) as caught:
        ipyllm.complete("hello")
    assert caught.value.message.startswith("budget: spent $0.4000 of $0.40 today; "), caught.value.message
    assert live.requests == []
    ipyllm.config.daily_budget_usd = 0.50
    assert ipyllm.complete("hello", max_tokens=20).usage.status == "ok"
    assert len(live.requests) == 1


def test_embeddings_are_checked_too(live: StubServer) -> None:
    ipyllm.config.budget_usd = 0
    with pytest.raises(ipyllm.BudgetExceededError):
        ipyllm.embed(["a text"])
    assert live.requests == [] and ipyllm.usage()["kind"].tolist() == ["embedding"]


def test_with_a_budget_an_unpriced_model_is_refused_before_sending(live: StubServer) -> None:
    ipyllm.config.budget_usd = 1.0
    for _ in range(2):
        with pytest.raises(ipyllm.BudgetExceededError) as caught:
            ipyllm.complete("one", model="openai/my-local-model")
        assert caught.value.message.startswith("no price is known for openai/my-local-model, so budget_usd cannot count it: ")
        assert "prices" in caught.value.message and "unset budget_usd" in caught.value.message
    assert live.requests == []
    assert ipyllm.usage()["status"].tolist() == ["over_budget", "over_budget"]
    # Given a price, it is counted and sent.
    ipyllm.config.prices = {"openai/my-local-model": "gpt-4o-mini"}
    reply = ipyllm.complete("two", model="openai/my-local-model")
    assert reply.usage.cost_usd > 0 and len(live.requests) == 1


def test_without_a_budget_an_unpriced_model_is_sent_and_costs_nan(live: StubServer, capfd: pytest.CaptureFixture[str]) -> None:
    ipyllm.complete("one", model="openai/my-local-model")
    assert len(live.requests) == 1 and ipyllm.usage()["cost_usd"].isna().all()
    assert capfd.readouterr().err == ""


def test_the_magic_prints_the_budget_line(ip: Any, live: StubServer) -> None:
    ipyllm.config.budget_usd = 0
    with capture_output() as captured:
        ip.run_cell("%llm hello")
    lines = [line for line in (captured.stdout + captured.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("BudgetExceededError: budget: spent $0.0000 of $0.00 this session; ")
    assert live.requests == []


# -- the cache -------------------------------------------------------------------------------------------


def test_an_identical_request_is_answered_from_the_cache(live: StubServer) -> None:
    ipyllm.config.cache = True
    first = ipyllm.complete("cache me", temperature=0.2)
    pieces: list[str] = []
    second = ipyllm.complete("cache me", temperature=0.2, stream=True, on_text=pieces.append)
    assert second == first and "".join(pieces) == first
    assert len(live.requests) == 1, "the second answer came from the cache"
    row = second.usage
    assert (row.status, row.cost_usd, row.attempts) == ("cached", 0.0, 0)
    assert (row.prompt_tokens, row.completion_tokens) == (first.usage.prompt_tokens, first.usage.completion_tokens)
    with sqlite3.connect(default_usage_db().path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM cache").fetchone()[0] == 1


@pytest.mark.parametrize("change", [{"temperature": 0.3}, {"model": "gpt-4o"}, {"max_tokens": 5}, {"system": "Be brief."}, {"top_p": 0.5}])
def test_a_change_that_alters_the_answer_misses(live: StubServer, change: dict[str, Any]) -> None:
    ipyllm.config.cache = True
    ipyllm.complete("cache me", temperature=0.2)
    reply = ipyllm.complete("cache me", **{"temperature": 0.2, **change})
    assert reply.usage.status == "ok" and len(live.requests) == 2


def test_the_same_request_to_another_server_is_sent_to_it(live: StubServer) -> None:
    ipyllm.config.cache = True
    assert str(ipyllm.complete("same prompt")) == "[gpt-4o-mini] same prompt"
    with StubServer() as other:
        ipyllm.config.base_url = other.base_url
        reply = ipyllm.complete("same prompt")
        assert len(other.requests) == 1, "another endpoint: the cached answer of the first does not apply"
        assert reply.usage.status == "ok"
    ipyllm.config.base_url = live.base_url
    assert ipyllm.complete("same prompt").usage.status == "cached", "the first server's answer is still cached"
    assert len(live.requests) == 1


def test_the_cache_is_off_by_default_and_outlives_the_session(live: StubServer) -> None:
    ipyllm.complete("same")
    ipyllm.complete("same")
    assert len(live.requests) == 2
    ipyllm.config.cache = True
    ipyllm.complete("kept")
    _api.session.__init__(config=ipyllm.config, client=_api.session.client, id=_api.SESSION_ID)  # a new kernel on the same ledger file
    assert ipyllm.complete("kept").usage.status == "cached"
    assert len(live.requests) == 3


def test_embeddings_are_cached(live: StubServer) -> None:
    ipyllm.config.cache = True
    first = ipyllm.embed(["x y", "z"])
    second = ipyllm.embed(["x y", "z"])
    assert second == first and second.usage.status == "cached" and len(live.requests) == 1


def test_the_cache_in_memory_mode(live: StubServer) -> None:
    ipyllm.config.update(cache=True, usage_db=":memory:")
    ipyllm.complete("in memory")
    assert ipyllm.complete("in memory").usage.status == "cached" and len(live.requests) == 1
    assert not default_usage_db().path.exists()


def test_no_cache_on_the_magic_sends_anyway(ip: Any, live: StubServer) -> None:
    ipyllm.config.cache = True
    with capture_output() as captured:
        ip.run_cell("%llm cached prompt")
        ip.run_cell("%llm cached prompt")
        ip.run_cell("%llm --no-cache cached prompt")
    assert len(live.requests) == 2
    assert [r.status for r in _api.session.ledger.rows()] == ["ok", "cached", "ok"]
    assert captured.stderr == ""


# -- %llm_usage ------------------------------------------------------------------------------------------


def test_llm_usage_all_by_day_and_cell(ip: Any, live: StubServer) -> None:
    store = SQLiteStore(default_usage_db())
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    store.append(
        UsageRow(
            timestamp=yesterday,
            session="earlier",
            cell=1,
            model="gpt-4o",
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=0.5,
            latency_s=2.0,
        )
    )
    store.close()
    with capture_output():
        ip.run_cell("%llm today", store_history=True)
    mine = ip.run_line_magic("llm_usage", "")
    assert list(mine.index) == ["gpt-4o-mini", "total"]
    everything = ip.run_line_magic("llm_usage", "--all")
    assert list(everything.index) == ["gpt-4o", "gpt-4o-mini", "total"]
    # This session's call, priced by hand: the stub's token counts at litellm's gpt-4o-mini prices.
    entry = load_litellm().model_cost["gpt-4o-mini"]
    prompt_tokens, completion_tokens = count_tokens("today") + 3 + 3, count_tokens("[gpt-4o-mini] today")
    today = prompt_tokens * entry["input_cost_per_token"] + completion_tokens * entry["output_cost_per_token"]
    assert mine.loc["total", "cost_usd"] == pytest.approx(today)
    assert everything.loc["total", "cost_usd"] == pytest.approx(0.5 + today)
    assert everything.loc["total", "calls"] == 2 and everything.loc["total", "input_tokens"] == 10 + prompt_tokens
    assert everything.loc["gpt-4o", "mean_latency_s"] == 2.0
    by_day = ip.run_line_magic("llm_usage", "--all --by day")
    assert len(by_day) == 3 and by_day.index.name == "day"
    by_cell = ip.run_line_magic("llm_usage", "--by cell")
    assert list(by_cell.index) == [1, "total"]
    with pytest.raises(Exception, match="invalid choice: 'week'"):
        ip.run_line_magic("llm_usage", "--by week")


def test_llm_usage_plot(ip: Any, live: StubServer) -> None:
    pytest.importorskip("matplotlib")
    with capture_output() as captured:
        ip.run_cell("%llm one")
        ip.run_cell("%llm -m gpt-4o two")
        ip.run_line_magic("llm_usage", "--plot")
    image = captured.outputs[-1].data["image/png"]
    assert len(image) > 1000


def test_llm_usage_plot_without_matplotlib_says_what_to_install(ip: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from IPython.core.error import UsageError

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(UsageError, match=r"--plot needs matplotlib: pip install matplotlib"):
        ip.run_line_magic("llm_usage", "--plot")


def test_amounts_below_a_hundredth_of_a_cent_keep_two_digits() -> None:
    assert (usd(0.4812), usd(0.000042), usd(0.0), usd(0.5, limit=True)) == ("$0.4812", "$0.000042", "$0.0000", "$0.50")
