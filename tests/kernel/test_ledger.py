"""The daily budget across kernels, and its window: since local midnight, not the last 24 hours.

Two real ipykernels share one ledger file, each calling the stub server from eight threads at once; the
ledger's holds must keep them, together, within ``daily_budget_usd``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import ipyllm
from ipyllm._locations import SQLiteFile
from ipyllm._sqlite import SQLiteStore
from ipyllm._usage import UsageRow
from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import reply_to, start_kernel, stop_kernel

#: Output at $0.001 a token, input free: with max_tokens=10 a call costs (and is estimated at) $0.01.
PRICES = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}
CALL_COST = 0.01

CALLS = """
import time
from concurrent.futures import ThreadPoolExecutor

def one(i):
    time.sleep(max(0.0, {start} - time.time()))  # both kernels' threads start together
    try:
        return ipyllm.complete("call " + str(i) + " from kernel {name}: " + "word " * 20, max_tokens=10).usage.status
    except ipyllm.BudgetExceededError:
        return "over_budget"

with ThreadPoolExecutor(8) as pool:
    statuses = list(pool.map(one, range(16)))
print(json.dumps(statuses))
"""


@pytest.mark.kernel
def test_two_kernels_on_one_ledger_stay_within_the_daily_budget(stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = 0.055  # room for five calls, not six
    ledger = tmp_path / "usage.sqlite"
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_USAGE_DB", str(ledger))
    monkeypatch.setenv("LLM_DAILY_BUDGET_USD", str(budget))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # Every answer takes a second: calls of both kernels are in flight together.
    stub.script(*[Fault.slow(1.0) for _ in range(40)])

    kernels = [start_kernel(tmp_path) for _ in range(2)]
    try:
        for _, client in kernels:
            setup = f"import ipyllm, json\nipyllm.config.prices = {PRICES!r}\nipyllm._litellm.load_litellm()"
            assert client.execute(setup, reply=True, timeout=120)["content"]["status"] == "ok"
        start = time.time() + 2
        ids = [client.execute(CALLS.format(start=start, name=n)) for n, (_, client) in enumerate(kernels)]
        printed = []
        for msg_id, (_, client) in zip(ids, kernels, strict=True):
            reply = reply_to(client, msg_id, timeout=120)
            assert reply["content"]["status"] == "ok", reply["content"]
            while True:
                message = client.get_iopub_msg(timeout=30)
                if message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "stream":
                    printed.append(json.loads(message["content"]["text"]))
                    break
    finally:
        for manager, client in kernels:
            stop_kernel(manager, client)

    with sqlite3.connect(ledger) as connection:
        rows = connection.execute("SELECT status, cost_usd, session FROM usage").fetchall()
        holds = connection.execute("SELECT COUNT(*) FROM holds").fetchone()[0]
    ok = [cost for status, cost, _ in rows if status == "ok"]
    print(f"{len(ok)} calls sent of {len(rows)}; spent ${sum(ok):.4f} of ${budget}")
    assert len(rows) == 32 and len({session for *_, session in rows}) == 2
    assert sum(ok) <= budget + 1e-9, "together the kernels never pass the daily budget"
    assert len(stub.requests) <= budget / CALL_COST
    assert all(cost == pytest.approx(CALL_COST) for cost in ok)
    # Every call held exactly its cost, so the budget is used in full: five calls, and the rest refused.
    assert len(ok) == len(stub.requests) == 5
    assert sorted(status for batch in printed for status in batch) == sorted(status for status, *_ in rows)
    assert holds == 0


# -- the daily window --------------------------------------------------------------------------------------


@pytest.fixture
def local_noon() -> Iterator[int]:
    """A time zone in which it is now about noon, and which is not UTC.

    At local noon, yesterday 23:30 and today 00:10 are both within the last 24 hours, and UTC's midnight is
    hours away from the local one: a daily window computed either way is told apart from the right one.
    """
    utc_hour = datetime.now(timezone.utc).hour
    offset = 12 - utc_hour if utc_hour != 12 else 2  # local = UTC + offset hours, never 0
    # POSIX TZ strings count west of Greenwich as positive: "TST-3" is UTC+3.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", f"TST{-offset:+d}")
        time.tzset()
        yield offset
    time.tzset()


def test_the_daily_budget_counts_from_local_midnight_not_the_last_24_hours(live: StubServer, tmp_path: Path, local_noon: int) -> None:
    ledger = tmp_path / "usage.sqlite"
    now = datetime.now().astimezone()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert midnight.utcoffset() == timedelta(hours=local_noon)
    assert 10 <= now.hour <= 15 and now - (midnight - timedelta(minutes=30)) < timedelta(hours=24)
    store = SQLiteStore(SQLiteFile(ledger))
    late_yesterday = midnight - timedelta(minutes=30)  # 23:30 local, yesterday
    early_today = midnight + timedelta(minutes=10)  # 00:10 local, today
    for moment in (late_yesterday, early_today):
        store.append(UsageRow(timestamp=moment.astimezone(timezone.utc), session="earlier", model="gpt-4o-mini", cost_usd=0.03))
    store.close()
    ipyllm.config.update(usage_db=str(ledger), prices=PRICES)

    # $0.03 today + $0.01 for this call fits $0.045; with yesterday's $0.03 too, it would not.
    reply = ipyllm.complete("hello " * 20, max_tokens=10, daily_budget_usd=0.045)
    assert reply.usage.status == "ok" and reply.usage.cost_usd == pytest.approx(CALL_COST) and len(live.requests) == 1
    # Today's rows count: now $0.04 spent, and another $0.01 would pass $0.045.
    with pytest.raises(ipyllm.BudgetExceededError, match=r"spent \$0\.0400 of \$0\.0450 today"):
        ipyllm.complete("hello again " * 20, max_tokens=10, daily_budget_usd=0.045)
    assert len(live.requests) == 1
