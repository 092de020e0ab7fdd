"""ipyllm's performance numbers: load time, call-path overhead over litellm, usage frame at scale, team ledger.

Run: ``.venv/bin/python benchmarks/bench.py`` (offline: everything talks to the stub server). The team
ledger figures need PostgreSQL installed (``apt-get install postgresql``): a server is started for them in
a temporary directory with its default (durable) settings, and stopped after.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")


def load_time() -> None:
    code = (
        "import time; from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance(); "
        "t = time.perf_counter(); ip.run_line_magic('load_ext', 'ipyllm'); print(time.perf_counter() - t)"
    )
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(5)]
    imports = [
        float(
            subprocess.run(
                [sys.executable, "-c", "import time; t=time.perf_counter(); import ipyllm; print(time.perf_counter()-t)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(5)
    ]
    print(f"import ipyllm:        median {statistics.median(imports) * 1000:.0f} ms (5 runs)")
    print(f"%load_ext ipyllm:     median {statistics.median(runs) * 1000:.0f} ms (5 runs, litellm warmed in a background thread)")


def call_overhead(n: int = 200) -> None:
    """ipyllm's own time per call: the whole ``ipyllm.complete`` minus the time spent inside litellm."""
    import tempfile

    import ipyllm
    from ipyllm import _api
    from ipyllm._client import Client, load_litellm
    from ipyllm.testing import StubServer

    litellm = load_litellm()
    inside: list[float] = []

    def timed_completion(**kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return litellm.completion(**kwargs)
        finally:
            inside.append(time.perf_counter() - started)

    _api.session.client = Client(completion=timed_completion)
    with StubServer() as stub, tempfile.TemporaryDirectory() as folder:
        # A real ledger file, as in a session (never the user's own).
        ipyllm.config.update(base_url=stub.base_url, api_key="sk-bench", usage_db=f"{folder}/usage.sqlite")
        for _ in range(20):
            ipyllm.complete("benchmark")
        inside.clear()
        total = []
        for _ in range(n):
            started = time.perf_counter()
            ipyllm.complete("benchmark")
            total.append(time.perf_counter() - started)
    own = [t - i for t, i in zip(total, inside, strict=True)]
    print(f"litellm.completion:   median {statistics.median(inside) * 1000:.2f} ms per call to the stub ({n} calls)")
    print(f"ipyllm's own time:    median {statistics.median(own) * 1000:.2f} ms per call (retry policy, usage row, cost, ledger insert)")


def frame_at_scale(rows: int = 100_000) -> None:
    import tempfile
    from pathlib import Path

    import pandas  # noqa: F401 - imported once per session; not what is measured here

    from ipyllm._ledger import MemoryLedger, SQLiteStore, UsageRow, to_frame

    ledger = MemoryLedger()
    now = datetime.now(timezone.utc)
    made = [
        UsageRow(
            timestamp=now,
            session="s",
            cell=i,
            model="gpt-4o-mini",
            provider="openai",
            prompt_tokens=10,
            completion_tokens=20,
            total_tokens=30,
            cost_usd=1e-5,
        )
        for i in range(rows)
    ]
    t = time.perf_counter()
    for row in made:
        ledger.append(row)
    appended = time.perf_counter() - t
    t = time.perf_counter()
    frame = to_frame(ledger.rows())
    built = time.perf_counter() - t
    print(f"memory append:        {appended / rows * 1e6:.1f} us per row ({rows:,} rows)")
    print(f"usage():              {built * 1000:.0f} ms for {len(frame):,} rows in memory")

    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "usage.sqlite")
        t = time.perf_counter()
        for row in made[:2000]:
            store.append(row)  # one committed insert per call, as in a session
        committed = (time.perf_counter() - t) / 2000
        with store._lock:
            connection = store._connect()
            connection.execute("BEGIN")
            connection.executemany(
                "INSERT INTO usage (timestamp_us, session, cell, model, provider, prompt_tokens, completion_tokens, total_tokens, "
                "cost_usd, status) VALUES (?, 'other', ?, 'gpt-4o', 'openai', 10, 20, 30, 1e-5, 'ok')",
                [(int(now.timestamp() * 1e6), i) for i in range(rows - 2000)],
            )
            connection.execute("COMMIT")
        t = time.perf_counter()
        everything = store.frame()
        read = time.perf_counter() - t
        t = time.perf_counter()
        store.spend(now)
        spend = time.perf_counter() - t
        store.close()
    print(f"ledger append:        {committed * 1e6:.0f} us per committed row (SQLite, WAL)")
    print(f"usage(all_sessions):  {read * 1000:.0f} ms for {len(everything):,} rows from SQLite")
    print(f"daily spend query:    {spend * 1000:.1f} ms over {rows:,} rows")


def team_ledger(calls: int = 300, rows: int = 100_000) -> None:
    """What the PostgreSQL ledger adds to a call on a local server, and reading 100,000 rows from it."""
    import tempfile

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from tests.pg import PostgresServer, find_binaries

    binaries = find_binaries()
    if binaries is None:
        print("team ledger:          skipped (PostgreSQL is not installed)")
        return
    import ipyllm
    from ipyllm import _api
    from ipyllm._config import LedgerURL
    from ipyllm._ledger import open_store
    from ipyllm.testing import StubServer

    server = PostgresServer(binaries, fsync=True).start()  # durable, as a team's server would be
    try:
        with StubServer() as stub, tempfile.TemporaryDirectory() as folder:
            os.environ["JUPYTER_DATA_DIR"] = folder
            ipyllm.config.update(base_url=stub.base_url, api_key="sk-bench", usage_db=server.url(server.new_database()))
            for _ in range(20):
                ipyllm.complete("benchmark")
            store = _api.session.store()
            assert store is not None
            row = _api.session.ledger.rows()[-1]
            store.flush()  # type: ignore[attr-defined]
            appends = []
            written = time.perf_counter()
            for _ in range(calls):
                started = time.perf_counter()
                store.append(row)
                appends.append(time.perf_counter() - started)
            store.flush()  # type: ignore[attr-defined]
            written = time.perf_counter() - written
            # A call with a team budget set also takes a hold on the server, in one locked transaction.
            from datetime import timedelta

            from ipyllm._budget import local_midnight
            from ipyllm._ledger import Hold, Limit

            limits = [Limit("daily_budget_usd", 1e9, local_midnight()), Limit("user_daily_budget_usd", 1e9, local_midnight(), "ada")]
            reserves = []
            for index in range(calls):
                now = datetime.now(timezone.utc)
                hold = Hold(f"bench-{index}", 0.001, "bench", "ada", "here", os.getpid(), now, now + timedelta(seconds=60))
                started = time.perf_counter()
                store.reserve(hold, limits)
                reserves.append(time.perf_counter() - started)
                store.release(hold.id)
            database = server.new_database()
            bulk = open_store(LedgerURL(server.url(database)))
            assert bulk is not None
            bulk.count()  # creates the schema
            server.sql(
                "INSERT INTO usage (uid, timestamp_us, session, cell, source, kind, model, provider, prompt_tokens, completion_tokens,"
                ' total_tokens, tokens_estimated, cost_usd, latency_s, attempts, status, "user", host)'
                " SELECT 'u' || i, 1700000000000000 + i, 's' || (i %% 40), i %% 500, 'api', 'chat', 'gpt-4o-mini', 'openai',"
                " 10, 20, 30, false, 1e-5, 0.4, 1, 'ok', 'ada', 'laptop' FROM generate_series(2, %s) AS i",
                [rows],
                database=database,
            )
            reads = []
            for _ in range(3):
                started = time.perf_counter()
                frame = bulk.frame()
                reads.append(time.perf_counter() - started)
            bulk.close()
            store.close()
    finally:
        server.remove()
    print(f"team ledger append:   median {statistics.median(appends) * 1000:.2f} ms per row (what a call waits for: the local spool)")
    print(f"team ledger writes:   {calls} rows on the server in {written * 1000:.0f} ms (local PostgreSQL, durable commits)")
    held = statistics.median(reserves) * 1000
    print(f"team budget hold:     median {held:.2f} ms per call with daily budgets set (one locked transaction)")
    print(f"usage(all_sessions):  median {statistics.median(reads) * 1000:.0f} ms for {len(frame):,} rows from PostgreSQL (3 reads)")


if __name__ == "__main__":
    load_time()
    call_overhead()
    frame_at_scale()
    if "--no-team" not in sys.argv:
        team_ledger()
