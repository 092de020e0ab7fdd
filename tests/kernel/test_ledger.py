"""The SQLite ledger shared by real kernels: together within one daily budget, and durable when a kernel is killed.

Two real ipykernels share one ledger file, each calling the stub server from eight threads at once; the
ledger's holds must keep them, together, within ``daily_budget_usd``. A kernel killed mid-run loses none of the
calls it reported finished.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import ledger_rows, reply_to, start_kernel, stop_kernel

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
                # stdout: a kernel kept waiting on the other's lock says so on stderr first (and spools its rows).
                ours = message["parent_header"].get("msg_id") == msg_id
                if ours and message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
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


# -- a kernel killed mid-run ------------------------------------------------------------------------------------


def test_a_kernel_killed_mid_run_loses_no_finished_call(stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "killed.sqlite"
    monkeypatch.setenv("LLM_USAGE_DB", str(path))
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    manager, client = start_kernel(tmp_path)
    try:
        reply = client.execute("import os, ipyllm", user_expressions={"pid": "os.getpid()"}, reply=True, timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        pid = int(reply["content"]["user_expressions"]["pid"]["data"]["text/plain"])
        client.execute("for i in range(10_000):\n    ipyllm.complete(f'call {i}')\n    print('finished', i, flush=True)")
        finished, text = -1, ""
        deadline = time.monotonic() + 60
        while finished < 20 and time.monotonic() < deadline:
            message = client.get_iopub_msg(timeout=30)
            if message["msg_type"] == "stream":
                text += message["content"]["text"]  # a line may come in pieces: read whole lines only
                whole = text[: text.rfind("\n") + 1]
                finished = max([finished, *(int(line.split()[1]) for line in whole.splitlines() if line.startswith("finished"))])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    finally:
        stop_kernel(manager, client)
    rows = ledger_rows(path)
    assert finished >= 20
    assert len(rows) >= finished + 1, "every call the kernel reported finished is in the ledger"
    assert len(rows) <= len(stub.requests)
    assert {r[2] for r in rows} == {"ok"}
