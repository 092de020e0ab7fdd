"""Spending limits (``ipyllm/_budget.py``): budgets that assume nothing and fail closed.

Every call under a budget carries an output cap it can pay for, and holds its worst case while in flight, so
calls in flight, other kernels' holds and the rows since local midnight all count; a call that could pass a
limit is refused before anything is sent, in one line that says what is spent and what is held.

Over real HTTP to the stub server, which cuts replies at ``max_tokens`` / ``max_completion_tokens`` (finish
reason ``length``) as providers do, and writes long replies on request (``reply_tokens``). gpt-4o-mini's
prices apply: $0.15 per 1M input tokens, $0.60 per 1M output tokens, at most 16,384 output tokens a call.

Budgets elsewhere: a map's in tests/batch/test_budget.py, two kernels' on one ledger in tests/kernel/test_ledger.py,
a team's on PostgreSQL in tests/postgres/.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api
from ipyllm._budget import INPUT_MARGIN, MIN_OUTPUT_TOKENS, Need, usd
from ipyllm._litellm import load_litellm
from ipyllm._locations import SQLiteFile, default_usage_db
from ipyllm._sqlite import SQLiteStore
from ipyllm._store import Headroom, Hold, Limit
from ipyllm._usage import UsageRow
from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import REFUSAL, run_threads, sent_cap

INPUT, OUTPUT = 0.15e-6, 0.60e-6
#: $0.001 per output token and max_tokens=10: a call may cost up to $0.01 and the budget can hold 5.
PRICED = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}
#: With PRICED and max_tokens=10 a call costs (and is estimated at) $0.01.
CALL_COST = 0.01


def test_the_prices_are_gpt_4o_minis() -> None:
    entry = load_litellm().model_cost["gpt-4o-mini"]
    assert (entry["input_cost_per_token"], entry["output_cost_per_token"], entry["max_output_tokens"]) == (INPUT, OUTPUT, 16_384)


# -- the arithmetic ------------------------------------------------------------------------------------------


def test_the_cap_is_what_the_headroom_pays_for_after_the_input() -> None:
    need = Need(input_cost=0.0005, output_cost_per_token=OUTPUT, ceiling=16_384)
    amount, cap = need.fit(0.002) or (None, None)
    # (0.002 - 0.0005 * 1.1) / 0.0000006 = 2,416.67: 2,416 tokens.
    assert cap == 2_416 and amount == pytest.approx(0.0005 * INPUT_MARGIN + 2_416 * OUTPUT) and amount <= 0.002
    # Never above the model's maximum or the user's own cap; the user's cap stays when it fits.
    assert need.fit(1.0) == (pytest.approx(0.00055 + 16_384 * OUTPUT), 16_384)
    assert Need(0.0005, OUTPUT, user_cap=100, ceiling=100).fit(1.0) == (pytest.approx(0.00055 + 100 * OUTPUT), 100)
    # Too little left for the input and 16 output tokens: refused; a user's smaller cap is the least worth sending.
    assert need.fit(0.00055 + 15 * OUTPUT) is None and need.fit(0.00055 + 16 * OUTPUT) is not None
    assert Need(0.0005, OUTPUT, user_cap=5, ceiling=5).fit(0.00055 + 5 * OUTPUT) is not None
    assert need.fit(0.0004) is None, "less than the input alone"
    assert MIN_OUTPUT_TOKENS == 16


# -- one call -------------------------------------------------------------------------------------------------


#: A prompt whose echo runs to over 3,000 tokens (words that differ: litellm stops a stream repeating one piece).
LONG = "Repeat after me: " + " ".join(f"w{i}" for i in range(3_000))


@pytest.mark.parametrize("stream", [False, True])
def test_a_long_reply_under_a_budget_spends_at_most_the_budget(live: StubServer, stream: bool, capfd: pytest.CaptureFixture[str]) -> None:
    ipyllm.config.budget_usd = 0.002
    guess = ipyllm.estimate(LONG)
    assert guess.input_cost + 3_000 * OUTPUT > 0.002, "uncut, the reply alone would pass the budget"
    reply = ipyllm.complete(LONG, stream=stream)
    (request,) = live.requests
    cap = sent_cap(request)
    # The request carried the cap the budget could pay for after the prompt, not the model's 16,384.
    assert cap == int((0.002 - guess.input_cost * INPUT_MARGIN) / OUTPUT)
    assert reply.usage.completion_tokens == cap < 3_000
    assert reply.usage.cost_usd <= 0.002 and ipyllm.usage()["cost_usd"].sum() <= 0.002
    # The reply says it was cut: its finish reason, its footer, and one line naming the budget.
    assert reply.finish_reason == "length" and reply.cut == f"cut at {cap:,} tokens by budget_usd"
    assert reply._repr_mimebundle_()["text/markdown"].endswith(f"· cut at {cap:,} tokens by budget_usd</sub>")
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"ipyllm: the reply was cut at {cap:,} output tokens: all that budget_usd ($0.0020, $0.0020 left before this call) could "
        "pay for after the prompt; raise budget_usd for the whole reply"
    ]


def test_without_a_budget_no_cap_is_added(live: StubServer) -> None:
    live.reply_tokens = 3_000
    reply = ipyllm.complete("Tell me everything about otters.")
    assert sent_cap(live.requests[0]) is None and reply.usage.completion_tokens == 3_000
    assert reply.finish_reason == "stop" and reply.cut is None


def test_a_reply_that_fits_under_its_cap_is_not_marked(live: StubServer, capfd: pytest.CaptureFixture[str]) -> None:
    ipyllm.config.budget_usd = 1.0
    reply = ipyllm.complete("short")
    assert sent_cap(live.requests[0]) == 16_384, "the model's own maximum: the budget could pay for more"
    assert reply.finish_reason == "stop" and reply.cut is None and capfd.readouterr().err == ""


def test_a_cut_reply_is_not_cached(live: StubServer) -> None:
    ipyllm.config.update(budget_usd=0.002, cache=True)
    assert ipyllm.complete(LONG).finish_reason == "length"
    ipyllm.config.budget_usd = 1.0
    whole = ipyllm.complete(LONG)
    assert len(live.requests) == 2, "asked again, with room for the whole reply"
    assert whole.finish_reason == "stop" and whole.usage.completion_tokens > 3_000
    assert ipyllm.complete(LONG).usage.status == "cached", "a whole reply is cached as before"


def test_a_reasoning_model_is_capped_with_max_completion_tokens(live: StubServer) -> None:
    live.reply_tokens = 3_000
    ipyllm.config.update(budget_usd=0.01, model="o3-mini")
    reply = ipyllm.complete("Think about otters.")
    body = live.requests[0].body
    assert "max_tokens" not in body and 0 < body["max_completion_tokens"] < 3_000
    assert reply.finish_reason == "length" and reply.usage.cost_usd <= 0.01


def test_the_magic_shows_the_cut_in_the_footer(ip: Any, live: StubServer) -> None:
    ipyllm.config.budget_usd = 0.002
    ip.user_ns["long"] = LONG
    with capture_output() as captured:
        ip.run_cell_magic("llm", "", "{long}")
    final = captured.outputs[-1].data["text/markdown"]
    assert re.search(r"· cut at [\d,]+ tokens by budget_usd</sub>$", final), final[-200:]
    assert "the reply was cut at" in captured.stderr and "raise budget_usd for the whole reply" in captured.stderr
    assert ipyllm.usage()["cost_usd"].sum() <= 0.002


# -- many threads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["budget_usd", "daily_budget_usd"])
def test_32_threads_of_long_replies_never_pass_a_budget(live: StubServer, tmp_path: Path, setting: str) -> None:
    live.reply_tokens = 3_000  # $0.0018 a reply when nothing cuts it: 32 of them would be $0.058
    live.delay = 0.2  # every call is in flight while the others decide
    ipyllm.config.update(usage_db=str(tmp_path / "usage.sqlite"), **{setting: 0.01})
    outcomes = run_threads(32, "Tell me everything about otters")
    frame = ipyllm.usage()
    assert frame["cost_usd"].sum() <= 0.01
    assert all(sent_cap(request) is not None for request in live.requests), "every request carried a cap"
    assert 1 <= len(live.requests) == (frame["status"] == "ok").sum()
    refused = [o for o in outcomes if o is not None]
    assert refused and all(isinstance(o, ipyllm.BudgetExceededError) for o in refused)
    assert all(REFUSAL.match(o.message) for o in refused), [o.message for o in refused if not REFUSAL.match(o.message)][:1]  # type: ignore[attr-defined]
    assert _api.session.budgets.held == 0


def test_the_refusal_line_says_what_is_spent_and_what_is_held(live: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    ipyllm.config.update(usage_db=str(ledger), daily_budget_usd=0.008)
    live.reply_tokens = 2_000
    ipyllm.complete("Tell me everything about otters")  # $0.0012 of output: spent
    live.script(Fault.slow(1.5))
    slow = threading.Thread(target=ipyllm.complete, args=("Tell me more about otters",))
    slow.start()  # in flight, holding the worst case the rest of the budget allows
    try:
        deadline = time.monotonic() + 10
        while _api.session.budgets.held == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ipyllm.BudgetExceededError) as refused:
            ipyllm.complete("And about beavers?")
        with sqlite3.connect(ledger) as connection:
            spent = connection.execute("SELECT SUM(cost_usd) FROM usage").fetchone()[0]
            held, holds = connection.execute("SELECT SUM(amount), COUNT(*) FROM holds").fetchone()
    finally:
        slow.join(30)
    match = REFUSAL.match(refused.value.message)
    assert match, refused.value.message
    shown_spent, shown_held, shown_holds, limit = float(match[1]), float(match[2]), int(match[3]), float(match[4])
    assert (shown_spent, shown_held, shown_holds, limit) == (
        pytest.approx(spent, abs=0.00005),
        pytest.approx(held, abs=0.00005),
        holds,
        0.008,
    )
    assert holds == 1 and spent == pytest.approx(ipyllm.usage()["cost_usd"].iloc[0])
    assert refused.value.refusal.spent == pytest.approx(spent) and refused.value.refusal.held == pytest.approx(held)


# -- refusals: this session, today, an unpriced model -----------------------------------------------------------


#: Amounts to a hundredth of a cent; below that, two significant digits ($0.0000066).
AMOUNT = r"\$(\d+\.\d{4}|0\.0000\d{2,3}|\d+\.\d{2})"
BUDGET_LINE = re.compile(
    rf"^budget: spent {AMOUNT}(, {AMOUNT} held by \d+ calls? in flight,)? of {AMOUNT} (this session|today); "
    rf"this call needs at least {AMOUNT} \(its input( and \d+ output tokens?)?\): raise \w+ to go on$"
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


def test_amounts_below_a_hundredth_of_a_cent_keep_two_digits() -> None:
    assert (usd(0.4812), usd(0.000042), usd(0.0), usd(0.5, limit=True)) == ("$0.4812", "$0.000042", "$0.0000", "$0.50")


# -- the daily window: since local midnight, not the last 24 hours ----------------------------------------------


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


def test_the_daily_budget_counts_from_local_midnight_not_the_last_24_hours(live: StubServer, tmp_path: Path, local_noon: datetime) -> None:
    ledger = tmp_path / "usage.sqlite"
    now = datetime.now().astimezone()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert midnight.utcoffset() == local_noon.utcoffset()
    assert 10 <= now.hour <= 15 and now - (midnight - timedelta(minutes=30)) < timedelta(hours=24)
    store = SQLiteStore(SQLiteFile(ledger))
    late_yesterday = midnight - timedelta(minutes=30)  # 23:30 local, yesterday
    early_today = midnight + timedelta(minutes=10)  # 00:10 local, today
    for moment in (late_yesterday, early_today):
        store.append(UsageRow(timestamp=moment.astimezone(timezone.utc), session="earlier", model="gpt-4o-mini", cost_usd=0.03))
    store.close()
    ipyllm.config.update(usage_db=str(ledger), prices=PRICED)

    # $0.03 today + $0.01 for this call fits $0.045; with yesterday's $0.03 too, it would not.
    reply = ipyllm.complete("hello " * 20, max_tokens=10, daily_budget_usd=0.045)
    assert reply.usage.status == "ok" and reply.usage.cost_usd == pytest.approx(CALL_COST) and len(live.requests) == 1
    # Today's rows count: now $0.04 spent, and another $0.01 would pass $0.045.
    with pytest.raises(ipyllm.BudgetExceededError, match=r"spent \$0\.0400 of \$0\.0450 today"):
        ipyllm.complete("hello again " * 20, max_tokens=10, daily_budget_usd=0.045)
    assert len(live.requests) == 1


# -- holds: calls in flight, other kernels, dead processes ------------------------------------------------------


@pytest.mark.parametrize("setting", ["budget_usd", "daily_budget_usd", "user_daily_budget_usd"])
def test_32_threads_never_pass_a_budget(live: StubServer, tmp_path: Path, setting: str) -> None:
    ipyllm.config.update(prices=PRICED, usage_db=str(tmp_path / "usage.sqlite"), **{setting: 0.05})
    live.script(*[Fault.slow(0.3)] * 32)  # every call is in flight while the others decide
    outcomes = run_threads(32, "says hello to the stub", max_tokens=10)
    frame = ipyllm.usage()
    sent = frame[frame["status"] == "ok"]
    # Each reply is "[gpt-4o-mini] thread N says ..." cut to 10 tokens: exactly $0.01 a call.
    assert sent["cost_usd"].tolist() == pytest.approx([0.01] * len(sent))
    assert sent["cost_usd"].sum() <= 0.05 + 1e-12
    assert len(sent) == len(live.requests) == 5
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 27 and all(isinstance(o, ipyllm.BudgetExceededError) for o in refused)
    assert (frame["status"] == "over_budget").sum() == 27
    assert _api.session.budgets.held == 0


def test_holds_of_another_kernel_count_until_settled_or_expired(tmp_path: Path) -> None:
    store = SQLiteStore(SQLiteFile(tmp_path / "usage.sqlite"))
    now = datetime.now(timezone.utc)
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    limit = [Limit("daily_budget_usd", 1.0, midnight)]

    def hold(name: str, amount: float, pid: int = 1, lifetime: float = 60) -> Hold:
        return Hold(name, amount, "other", "ada", "elsewhere", pid, now, now + timedelta(seconds=lifetime))

    assert isinstance(store.reserve(hold("a", 0.6), limit), Hold)
    refused = store.reserve(hold("b", 0.6), limit)
    # Refused: nothing spent yet, 0.6 held by one call in flight.
    assert isinstance(refused, Headroom) and (refused.spent, refused.held, refused.holds) == (0.0, pytest.approx(0.6), 1)
    # Settling "a" with its row: spend stays 0.6 (row instead of hold), so "b" is still refused...
    store.append(UsageRow(session="other", cost_usd=0.6, user="ada"), release="a")
    refused = store.reserve(hold("b", 0.6), limit)
    assert isinstance(refused, Headroom) and (refused.spent, refused.held, refused.holds) == (pytest.approx(0.6), 0.0, 0)
    assert isinstance(store.reserve(hold("c", 0.4), limit), Hold)
    # ...and an expired hold (a kernel that died) stops counting.
    assert isinstance(store.reserve(hold("d", 0.1), limit), Headroom)
    store.release("c")
    assert isinstance(store.reserve(hold("e", 0.3, lifetime=-1), limit), Hold)  # already expired when taken
    assert isinstance(store.reserve(hold("f", 0.4), limit), Hold)


def test_a_hold_of_a_dead_process_on_this_host_is_dropped(tmp_path: Path) -> None:
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True, cwd=tmp_path)
    pid = int(dead.stdout)
    store = SQLiteStore(SQLiteFile(tmp_path / "usage.sqlite"))
    now = datetime.now(timezone.utc)
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    limit = [Limit("daily_budget_usd", 1.0, midnight)]
    host = socket.gethostname()
    assert isinstance(store.reserve(Hold("dead", 0.9, "s", "u", host, pid, now, now + timedelta(hours=1)), limit), Hold)
    taken = store.reserve(Hold("alive", 0.9, "s", "u", host, 1, now, now + timedelta(hours=1)), limit)  # pid 1 lives
    assert isinstance(taken, Hold) and taken.amount == 0.9


# -- two users on one SQLite ledger -----------------------------------------------------------------------------


def refusal(spent: str, setting: str) -> str:
    """The refusal of a $0.01 call (10 output tokens at $0.001, its input free) when ``spent`` leaves less."""
    return f"budget: spent {spent}; this call needs at least $0.0100 (its input and 10 output tokens): raise {setting} to go on"


def users_and_costs(ledger: Path) -> list[tuple[str, float]]:
    """The user and cost of every row a call left in the ledger file (refusals cost 0)."""
    with sqlite3.connect(ledger) as connection:
        return connection.execute("SELECT user, cost_usd FROM usage").fetchall()


def test_two_users_on_one_ledger_have_a_daily_budget_each_and_share_the_daily_budget(live: StubServer, tmp_path: Path) -> None:
    """``user_daily_budget_usd`` counts its user's rows and holds only; ``daily_budget_usd`` counts everyone's.

    Two sessions of two users write to one SQLite ledger file, as two kernels of a shared machine would (the team
    ledger's counterpart is in tests/postgres/, which is skipped where PostgreSQL is not installed).
    """
    ledger = tmp_path / "shared.sqlite"
    shared = {"base_url": live.base_url, "api_key": SECRET, "usage_db": str(ledger), "prices": PRICED, "timeout": 5}
    ada = ipyllm.Session(user="ada", user_daily_budget_usd=0.03, **shared)
    bob = ipyllm.Session(user="bob", user_daily_budget_usd=0.03, **shared)
    try:
        # Each call costs $0.01 (10 output tokens at $0.001): ada's three spend her $0.03, and her fourth is refused.
        for _ in range(3):
            assert ada.complete("ada says hello to the stub, at length", max_tokens=10).usage.cost_usd == pytest.approx(CALL_COST)
        with pytest.raises(ipyllm.BudgetExceededError) as refused:
            ada.complete("ada asks once more, at length", max_tokens=10)
        assert refused.value.message == refusal("$0.0300 of $0.03 today by ada", "user_daily_budget_usd")
        assert len(live.requests) == 3
        # ada's spend, in the same file, is not bob's: his $0.03 are all his own.
        for _ in range(3):
            assert bob.complete("bob says hello to the stub, at length", max_tokens=10).usage.status == "ok"
        with pytest.raises(ipyllm.BudgetExceededError) as refused:
            bob.complete("bob asks once more, at length", max_tokens=10)
        assert refused.value.message == refusal("$0.0300 of $0.03 today by bob", "user_daily_budget_usd")
        assert len(live.requests) == 6
        rows = users_and_costs(ledger)
        assert {user: sum(cost for who, cost in rows if who == user) for user in ("ada", "bob")} == pytest.approx(
            {"ada": 0.03, "bob": 0.03}
        )
        # The daily budget counts both users' rows: $0.06 spent leaves no room in $0.065 for another $0.01 call.
        bob.config.update(user_daily_budget_usd=None, daily_budget_usd=0.065)
        with pytest.raises(ipyllm.BudgetExceededError) as refused:
            bob.complete("bob asks the whole machine's budget, at length", max_tokens=10)
        assert refused.value.message == refusal("$0.0600 of $0.0650 today", "daily_budget_usd")
        bob.config.update(daily_budget_usd=0.075)
        assert bob.complete("bob fits in the daily budget, at length", max_tokens=10).usage.status == "ok"
        assert len(live.requests) == 7
    finally:
        ada.close()
        bob.close()
