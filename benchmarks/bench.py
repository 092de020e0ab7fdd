"""ipyllm's performance numbers: load time, call-path overhead over litellm, usage frame at scale.

Run: ``.venv/bin/python benchmarks/bench.py`` (offline: everything talks to the stub server).
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


if __name__ == "__main__":
    load_time()
    call_overhead()
    frame_at_scale()
