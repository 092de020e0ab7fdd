"""Maps under a daily budget: in this process, with helper processes, and two processes mapping on one ledger.

Over real HTTP to the stub server, which writes long replies on request (``reply_tokens``) and cuts them at the
cap a budget sends; the ledger file's holds keep every process, together, within ``daily_budget_usd``. The
budget's own tests are in tests/unit/test_budget.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ipyllm
from ipyllm.testing import StubServer

from ..helpers import REFUSAL, ROOT, sent_cap

TEXTS = [f"Summarise text {i}: " + "otters hold hands while they sleep " * 40 for i in range(100)]


def test_a_map_over_long_texts_spends_at_most_its_daily_budget(live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "usage.sqlite"
    live.reply_tokens = 5_000  # $0.003 a reply: the budget pays for about 16 of the 100
    live.delay = 0.05
    ipyllm.config.update(usage_db=str(ledger), daily_budget_usd=0.05)
    result = ipyllm.map("{value}", TEXTS, concurrency=8, progress=False)
    with sqlite3.connect(ledger) as connection:
        spent = connection.execute("SELECT SUM(cost_usd) FROM usage").fetchone()[0]
        assert connection.execute("SELECT COUNT(*) FROM holds").fetchone()[0] == 0
    assert spent <= 0.05 and ipyllm.usage()["cost_usd"].sum() == pytest.approx(spent)
    answered = int(result.notna().sum())
    assert answered >= 10, "the budget was used, not refused wholesale while holds were in flight"
    assert answered == len(live.requests) and all(sent_cap(r) is not None for r in live.requests)
    batch = ipyllm.last_batch()
    assert batch is not None and batch.tally.not_sent == 100 - answered
    # The refusal line, once every call of the batch had ended: its spent is the ledger's, nothing is held.
    assert batch.budget_message is not None
    match = REFUSAL.match(batch.budget_message)
    assert match and match[2] is None and float(match[1]) == pytest.approx(spent, abs=0.00005), batch.budget_message
    err = capfd.readouterr().err
    assert f"{100 - answered} of 100 rows not sent" in err
    assert (ipyllm.usage()["status"] == "over_budget").sum() == 1


def test_a_map_with_helper_processes_spends_at_most_its_daily_budget(live: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    live.reply_tokens = 5_000
    live.delay = 0.3
    ipyllm.config.update(usage_db=str(ledger), daily_budget_usd=0.05)
    result = ipyllm.map("{value}", TEXTS, concurrency=8, processes=2, progress=False)
    with sqlite3.connect(ledger) as connection:
        spent = connection.execute("SELECT SUM(cost_usd) FROM usage").fetchone()[0]
    assert spent <= 0.05 and result.notna().sum() >= 10


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import ipyllm
    settings, go, texts = json.loads(sys.argv[1])
    ipyllm.config.update(**settings)
    ipyllm._litellm.load_litellm()
    Path(go + ".ready." + str(__import__("os").getpid())).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    result = ipyllm.map("{value}", texts, concurrency=8, progress=False)
    print(json.dumps({"answered": int(result.notna().sum()), "message": ipyllm.last_batch().budget_message}))
    """
)


def test_two_processes_mapping_on_one_ledger_spend_at_most_its_daily_budget(stub: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    stub.reply_tokens, stub.delay = 5_000, 0.05
    settings = {"base_url": stub.base_url, "api_key": "sk-worker", "usage_db": str(ledger), "daily_budget_usd": 0.05, "timeout": 30}
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps([settings, str(go), TEXTS[part::2]])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for part in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    with sqlite3.connect(ledger) as connection:
        spent, sent = connection.execute("SELECT SUM(cost_usd), SUM(status = 'ok') FROM usage").fetchone()
        assert connection.execute("SELECT COUNT(*) FROM holds").fetchone()[0] == 0
    assert spent <= 0.05 and sent == sum(r["answered"] for r in results) == len(stub.requests) >= 10
    assert all(r["message"] and REFUSAL.match(r["message"]) for r in results), results
