"""Issue 21's ledger targets: the notebook's views stay fast at any ledger size, on SQLite and on PostgreSQL.

Run: ``.venv/bin/python benchmarks/ledger_bench.py [--rows 1000000] [--frame-rows 100000] [--no-postgres]``.

For each ledger (a SQLite file; a PostgreSQL server started in a temporary directory as the tests start one, when
PostgreSQL is installed), ``--rows`` rows are bulk-inserted (``ledger_fill``), then timed in a real IPython shell with
``%load_ext ipyllm`` and ``usage_db`` pointed at the ledger (litellm loaded first, so its background import does not
hold the GIL meanwhile):

- ``%llm_usage --all --by model`` over every row (target <= 0.3 s);
- a session's own ``%llm_usage`` (its 20 calls, in a ledger of every row; target <= 50 ms);
- ``ipyllm.usage(all_sessions=True)`` of a ledger of ``--frame-rows`` rows (target <= 0.3 s), four ways: in a fresh
  process with no frame file kept (``_framefile``: it reads the ledger's packed chunks, ``_framechunks``, which
  ``ledger_fill`` packs as writing kernels would; the process has imported pandas, numpy and psycopg, and opens the
  ledger in the time), in a fresh process with the frame file kept, read again in this process, and read in this
  process after 1,000 rows were appended by another connection (at times among the rows held: re-sorted).

Each figure is the median of several runs (in this process: after one warm-up run). The frame files are kept in a
temporary directory (``IPYLLM_CACHE_DIR``), never the user's cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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

#: The four ways ``usage(all_sessions=True)`` is timed.
FRAME_READS = ("fresh process, no frame file", "fresh process, frame file", "read again", "after 1,000 appended")
TARGETS = {
    "%llm_usage --all --by model": 0.3,
    "own %llm_usage": 0.05,
    **{f"usage(all_sessions=True): {how}": 0.3 for how in FRAME_READS},
}

#: A fresh kernel's first ``usage(all_sessions=True)``: its seconds, and the rows it got.
FRESH = """
import sys, time
sys.path.insert(0, sys.argv[2])
import numpy, pandas
if sys.argv[1].startswith("postgresql"):
    import psycopg
import ipyllm
ipyllm.config.update(usage_db=sys.argv[1])
started = time.perf_counter()
frame = ipyllm.usage(all_sessions=True)
print(len(frame), time.perf_counter() - started)
"""


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


def in_fresh_process(ledger: str, rows: int) -> float:
    """Seconds a fresh process takes for its first ``usage(all_sessions=True)`` of ``ledger`` (``rows`` rows)."""
    done = subprocess.run([sys.executable, "-c", FRESH, ledger, str(ROOT)], capture_output=True, text=True, check=True, timeout=300)
    count, seconds = done.stdout.split()
    assert int(count) == rows, f"a fresh process read {count} rows, not {rows}"
    return float(seconds)


def frame_figures(ledger: str, rows: int, runs: int, append: Callable[[int], object]) -> dict[str, tuple[int, float]]:
    """``usage(all_sessions=True)`` of ``ledger`` (``rows`` rows) the four ways; ``append(seed)`` appends 1,000 rows."""
    import ipyllm
    from ipyllm import _api
    from ipyllm._framefile import frame_file, identity_of
    from ipyllm._locations import parse_location

    kept = frame_file(identity_of(parse_location(ledger)))  # type: ignore[arg-type]
    assert kept is not None
    tries = max(3, runs // 2)
    cold = []
    for _ in range(tries):
        kept.unlink(missing_ok=True)
        cold.append(in_fresh_process(ledger, rows))
    assert kept.is_file(), "the first read keeps the frame file"
    with_file = [in_fresh_process(ledger, rows) for _ in range(tries)]
    ipyllm.config.update(usage_db=ledger)
    mine = len(_api.session.records.memory.rows())
    again = median_time(lambda: ipyllm.usage(all_sessions=True), runs)
    appended = []
    for seed in range(tries):
        append(100 + seed)
        started = time.perf_counter()
        frame = ipyllm.usage(all_sessions=True)
        appended.append(time.perf_counter() - started)
        assert len(frame) == rows + 1000 * (seed + 1) + mine, len(frame)
    ipyllm.config.update(usage_db=":memory:")
    _api.session.records.close()
    seconds = [statistics.median(cold), statistics.median(with_file), again, statistics.median(appended)]
    return {f"usage(all_sessions=True): {how}": (rows, took) for how, took in zip(FRAME_READS, seconds, strict=True)}


def measure(
    ip: Any, big: str, small: str, rows: int, frame_rows: int, runs: int, append: Callable[[int], object]
) -> dict[str, tuple[int, float]]:
    """The figures, on the ledger ``big`` (``rows`` rows) and ``small`` (``frame_rows`` rows; ``append`` adds 1,000)."""
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
    ipyllm.config.update(usage_db=":memory:")
    _api.session.records.close()
    return {**figures, **frame_figures(small, frame_rows, runs, append)}


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
    now_us = int(time.time() * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="ipyllm-ledger-bench-") as folder:
        os.environ["IPYLLM_CACHE_DIR"] = str(Path(folder) / "cache")  # the frame files, here (and the fresh processes' too)
        big, small = Path(folder) / "big.sqlite", Path(folder) / "small.sqlite"
        fills.append(f"SQLite: {args.rows:,} rows in {ledger_fill.fill_sqlite(big, args.rows):.1f} s")
        ledger_fill.fill_sqlite(small, args.frame_rows, seed=2, end_us=now_us)
        figures = measure(
            ip, str(big), str(small), args.rows, args.frame_rows, args.runs, lambda seed: ledger_fill.fill_sqlite(small, 1000, seed, now_us)
        )
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
                    ledger_fill.fill_postgres(small_url, args.frame_rows, seed=2, end_us=now_us)
                    figures = measure(
                        ip, big_url, small_url, args.rows, args.frame_rows, args.runs,
                        lambda seed: ledger_fill.fill_postgres(small_url, 1000, seed, now_us),
                    )  # fmt: skip
                    for name, (count, seconds) in figures.items():
                        results.append(("PostgreSQL", name, count, seconds))
                finally:
                    server.remove()
    print("\n".join(fills))
    print(f"{'ledger':<11} {'what':<57} {'rows':>10} {'median':>9} {'target':>8}  ")
    for ledger, name, count, seconds in results:
        target = TARGETS[name]
        verdict = "ok" if seconds <= target else "OVER"
        print(f"{ledger:<11} {name:<57} {count:>10,} {seconds * 1000:>7.1f} ms {target * 1000:>5.0f} ms  {verdict}")
    print(f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
