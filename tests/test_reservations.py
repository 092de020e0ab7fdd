"""Budgets fail closed: calls in flight hold their estimated cost, over real HTTP to the stub server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import ipyllm
from ipyllm import _api
from ipyllm._locations import SQLiteFile
from ipyllm._sqlite import SQLiteStore
from ipyllm._store import Headroom, Hold, Limit
from ipyllm._usage import UsageRow
from ipyllm.testing import Fault, StubServer

from .helpers import run_threads

#: $0.001 per output token and max_tokens=10: a call may cost up to $0.01 and the budget can hold 5.
PRICED = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}


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
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    store = SQLiteStore(SQLiteFile(tmp_path / "usage.sqlite"))
    now = datetime.now(timezone.utc)
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    limit = [Limit("daily_budget_usd", 1.0, midnight)]
    host = socket.gethostname()
    assert isinstance(store.reserve(Hold("dead", 0.9, "s", "u", host, pid, now, now + timedelta(hours=1)), limit), Hold)
    taken = store.reserve(Hold("alive", 0.9, "s", "u", host, 1, now, now + timedelta(hours=1)), limit)  # pid 1 lives
    assert isinstance(taken, Hold) and taken.amount == 0.9
