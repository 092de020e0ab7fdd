"""ipyllm's performance numbers: load time, call-path overhead over litellm, usage frame at scale, team ledger.

Run: ``.venv/bin/python benchmarks/bench.py [load] [call] [frame] [team]`` (offline: everything talks to the
stub server). The team ledger figures need PostgreSQL installed (``apt-get install postgresql``): a server is
started for them in a temporary directory with its default (durable) settings, and stopped after.
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


def stub_process() -> tuple[subprocess.Popen[str], str]:
    """The stub server in a process of its own, as a provider is: its threads do not share the benchmark's GIL."""
    process = subprocess.Popen([sys.executable, "-m", "ipyllm.testing", "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()  # "ipyllm stub server on http://127.0.0.1:PORT/v1"
    return process, first.rsplit(" ", 1)[-1].strip()


def call_overhead(n: int = 300, rounds: int = 3) -> None:
    """ipyllm's own time per call: the whole ``ipyllm.complete`` minus the time spent inside litellm.

    Real calls over HTTP to the stub server, with the ledger in a SQLite file (each row committed before
    ``complete`` returns). Wall time counts whatever runs while ipyllm finishes the call, litellm's own
    background work included (it hands every response to a logging thread, about 0.8 ms of CPU); CPU time
    counts the calling thread only.
    """
    import tempfile

    import ipyllm
    from ipyllm import _api
    from ipyllm._engine import Client
    from ipyllm._litellm import load_litellm

    litellm = load_litellm()
    # (wall, CPU of this thread, CPU of the whole process) inside litellm.completion, and around ipyllm.complete.
    inside: list[tuple[float, float, float]] = []

    def clocks() -> tuple[float, float, float]:
        return time.perf_counter(), time.thread_time(), time.process_time()

    def timed_completion(**kwargs: object) -> object:
        started = clocks()
        try:
            return litellm.completion(**kwargs)
        finally:
            inside.append(tuple(end - start for end, start in zip(clocks(), started, strict=True)))  # type: ignore[arg-type]

    _api.session.client = Client(completion=timed_completion)
    process, base_url = stub_process()
    own_wall: list[float] = []
    own_cpu: list[float] = []
    others: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            # A real ledger file, as in a session (never the user's own).
            ipyllm.config.update(base_url=base_url, api_key="sk-bench", usage_db=f"{folder}/usage.sqlite")
            for _ in range(20):
                ipyllm.complete("benchmark")
            for _ in range(rounds):
                inside.clear()
                total = []
                for _ in range(n):
                    started = clocks()
                    ipyllm.complete("benchmark")
                    total.append(tuple(end - start for end, start in zip(clocks(), started, strict=True)))
                own = [[t[k] - i[k] for t, i in zip(total, inside, strict=True)] for k in range(3)]
                own_wall.append(statistics.median(own[0]))
                own_cpu.append(statistics.median(own[1]))
                others.append(statistics.median(p - c for p, c in zip(own[2], own[1], strict=True)))
            within = statistics.median(i[0] for i in inside)
            # Closed before its folder goes: a ledger deleted while in use is recreated, folder and all.
            _api.session.close()
    finally:
        process.terminate()
        process.wait()

    def shown(values: list[float]) -> str:
        return ", ".join(f"{v * 1000:.2f}" for v in values)

    print(f"litellm.completion:   median {within * 1000:.2f} ms per call to the stub ({n} calls)")
    print(f"ipyllm's own time:    median {shown(own_wall)} ms per call, wall ({rounds} rounds of {n} calls)")
    print(f"ipyllm's own CPU:     median {shown(own_cpu)} ms per call, calling thread only")
    print(f"other threads' CPU:   median {shown(others)} ms per call meanwhile (litellm's logging thread, let in by the commit)")


def frame_at_scale(rows: int = 100_000) -> None:
    import tempfile
    from pathlib import Path

    import pandas  # noqa: F401 - imported once per session; not what is measured here

    from ipyllm._locations import SQLiteFile
    from ipyllm._sqlite import SQLiteStore
    from ipyllm._store import MemoryLedger
    from ipyllm._usage import UsageRow, to_frame

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
        store = SQLiteStore(SQLiteFile(Path(folder) / "usage.sqlite"))
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
    from ipyllm._ledger import open_store
    from ipyllm._locations import parse_location
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
            from ipyllm._store import Hold, Limit

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
            bulk = open_store(parse_location(server.url(database)))
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
    only = sys.argv[1:]
    for name, run in (("load", load_time), ("call", call_overhead), ("frame", frame_at_scale), ("team", team_ledger)):
        if not only or name in only:
            run()
