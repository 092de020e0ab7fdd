"""Issue 21's ledger targets: the notebook's views stay fast at any ledger size, on SQLite and on PostgreSQL.

Run: ``.venv/bin/python benchmarks/ledger_bench.py [--rows 1000000] [--frame-rows 100000] [--no-postgres]``.

For each ledger (a SQLite file; a PostgreSQL server started in a temporary directory as the tests start one, when
PostgreSQL is installed), ``--rows`` rows are bulk-inserted (``ledger_fill``), then timed in a real IPython shell with
``%load_ext ipyllm`` and ``usage_db`` pointed at the ledger (litellm loaded first, so its background import does not
hold the GIL meanwhile):

- ``%llm_usage --all --by model`` over every row (target <= 0.3 s);
- a session's own ``%llm_usage`` (its 20 calls, in a ledger of every row; target <= 50 ms);
- ``ipyllm.usage(all_sessions=True)`` of a ledger of ``--frame-rows`` rows (target <= 0.3 s).

Each figure is the median of several runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

import ledger_fill  # noqa: E402

TARGETS = {"%llm_usage --all --by model": 0.3, "own %llm_usage": 0.05, "usage(all_sessions=True)": 0.3}


def median_time(action: Callable[[], Any], runs: int) -> float:
    action()  # warm-up: the connection opened, the pages read once
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def shell() -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    from ipyllm._litellm import load_litellm

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyllm")
    load_litellm()
    return ip


def measure(ip: Any, big: str, small: str, rows: int, frame_rows: int, runs: int) -> dict[str, tuple[int, float]]:
    """The three figures, on the ledger ``big`` (``rows`` rows) and ``small`` (``frame_rows`` rows)."""
    import ipyllm
    from ipyllm import _api
    from ipyllm._usage import UsageRow

    ipyllm.config.update(usage_db=big)
    for n in range(20):  # this session's own calls, in memory and in the ledger
        _api.session.records.record(
            UsageRow(session=_api.session.id, model="gpt-4o-mini", prompt_tokens=10 + n, completion_tokens=5, cost_usd=1e-5)
        )
    figures = {
        "%llm_usage --all --by model": (rows, median_time(lambda: ip.run_line_magic("llm_usage", "--all --by model"), runs)),
        "own %llm_usage": (rows, median_time(lambda: ip.run_line_magic("llm_usage", ""), runs)),
    }
    mine = len(_api.session.records.memory.rows(_api.session.id))  # this session's calls (of every ledger it used)
    total = ip.run_line_magic("llm_usage", "--all --by model").loc["total", "calls"]
    assert total == rows + mine, f"the table counts {total} calls, not {rows + mine}"
    ipyllm.config.update(usage_db=small)
    frame = ipyllm.usage(all_sessions=True)
    assert len(frame) == frame_rows + mine, len(frame)
    figures["usage(all_sessions=True)"] = (frame_rows, median_time(lambda: ipyllm.usage(all_sessions=True), max(3, runs // 2)))
    ipyllm.config.update(usage_db=":memory:")
    _api.session.records.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--frame-rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    ip = shell()
    results: list[tuple[str, str, int, float]] = []
    fills: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ipyllm-ledger-bench-") as folder:
        big, small = Path(folder) / "big.sqlite", Path(folder) / "small.sqlite"
        fills.append(f"SQLite: {args.rows:,} rows in {ledger_fill.fill_sqlite(big, args.rows):.1f} s")
        ledger_fill.fill_sqlite(small, args.frame_rows, seed=2)
        figures = measure(ip, str(big), str(small), args.rows, args.frame_rows, args.runs)
        for name, (count, seconds) in figures.items():
            results.append(("SQLite", name, count, seconds))
    if not args.no_postgres:
        from tests.postgres.pg import PostgresServer, find_binaries

        binaries = find_binaries()
        if binaries is None:
            fills.append("PostgreSQL: not installed (apt-get install postgresql): not measured")
        else:
            server = PostgresServer(binaries, fsync=True).start()
            try:
                big_url, small_url = server.url(server.new_database()), server.url(server.new_database())
                fills.append(f"PostgreSQL: {args.rows:,} rows in {ledger_fill.fill_postgres(big_url, args.rows):.1f} s")
                ledger_fill.fill_postgres(small_url, args.frame_rows, seed=2)
                for name, (count, seconds) in measure(ip, big_url, small_url, args.rows, args.frame_rows, args.runs).items():
                    results.append(("PostgreSQL", name, count, seconds))
            finally:
                server.remove()
    print("\n".join(fills))
    print(f"{'ledger':<11} {'what':<28} {'rows':>10} {'median':>9} {'target':>8}  ")
    for ledger, name, count, seconds in results:
        target = TARGETS[name]
        verdict = "ok" if seconds <= target else "OVER"
        print(f"{ledger:<11} {name:<28} {count:>10,} {seconds * 1000:>7.1f} ms {target * 1000:>5.0f} ms  {verdict}")
    print(f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
