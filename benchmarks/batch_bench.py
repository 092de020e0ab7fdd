"""``ipyllm.map`` against a bare ``litellm.acompletion`` loop and ``litellm.batch_completion``.

Run: ``.venv/bin/python benchmarks/batch_bench.py`` (1,000 prompts, concurrency 32, the stub server
answering in 50 ms, in a process of its own so it does not share the GIL with the clients; then
``map(processes=2)``), and ``.venv/bin/python benchmarks/batch_bench.py --rows 100000 --delay 0 --only-map
--processes 1`` (peak memory and rows written).
Everything is offline: the stub server echoes the prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

MODEL = "gpt-4o-mini"
KEY = "sk-stub"


def start_stub(delay: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ipyllm.testing", "--delay", str(delay)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+/v1)", line)
    assert match, line
    return process, match[1]


def prompts(n: int) -> list[str]:
    return [f"Say something short about item number {i}." for i in range(n)]


def bare_loop(base_url: str, items: list[str], concurrency: int) -> float:
    from ipyllm._litellm import load_litellm

    litellm = load_litellm()

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> None:
            async with gate:
                await litellm.acompletion(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], api_base=base_url, api_key=KEY, max_retries=0
                )

        await asyncio.gather(*(one(p) for p in items))

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


def batch_completion(base_url: str, items: list[str], concurrency: int) -> float:
    from ipyllm._litellm import load_litellm

    litellm = load_litellm()
    started = time.perf_counter()
    litellm.batch_completion(
        model=MODEL,
        messages=[[{"role": "user", "content": p}] for p in items],
        api_base=base_url,
        api_key=KEY,
        max_workers=concurrency,
        max_retries=0,
    )
    return time.perf_counter() - started


def ipyllm_map(base_url: str, items: list[str], concurrency: int, processes: int = 1) -> tuple[float, int]:
    import ipyllm

    ipyllm.config.update(base_url=base_url, api_key=KEY, model=MODEL)
    started = time.perf_counter()
    result = ipyllm.map("{value}", items, concurrency=concurrency, progress=False, processes=processes)
    elapsed = time.perf_counter() - started
    assert result.notna().all(), ipyllm.last_batch().errors.value_counts()  # type: ignore[union-attr]
    return elapsed, len(result)


def rows_in(db: str) -> int:
    with sqlite3.connect(db) as connection:
        return int(connection.execute("select count(*) from usage where source = 'map'").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.05, help="the stub's latency in seconds")
    parser.add_argument("--only-map", action="store_true", help="run ipyllm.map alone (the memory run)")
    parser.add_argument("--processes", type=int, default=2, help="also run map(processes=N) (1: skip)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="ipyllm-bench-")
    db = os.path.join(folder, "usage.sqlite")
    os.environ["LLM_USAGE_DB"] = db
    stub, base_url = start_stub(args.delay)
    try:
        items = prompts(args.rows)
        # Warm-up: litellm's import, its clients and the stub's threads, for every contender alike.
        bare_loop(base_url, prompts(40), args.concurrency)
        print(f"{args.rows:,} prompts, concurrency {args.concurrency}, stub latency {args.delay * 1000:.0f} ms, 2-core machine")
        ideal = args.rows / args.concurrency * args.delay
        if not args.only_map:
            bare = bare_loop(base_url, items, args.concurrency)
            print(f"  bare acompletion + Semaphore: {bare:6.2f} s  ({args.rows / bare:6.1f} rows/s)")
            batch = batch_completion(base_url, items, args.concurrency)
            print(f"  litellm.batch_completion:     {batch:6.2f} s  ({args.rows / batch:6.1f} rows/s)")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mapped, n = ipyllm_map(base_url, [f"{p} (map)" for p in items], args.concurrency)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"  ipyllm.map:                   {mapped:6.2f} s  ({args.rows / mapped:6.1f} rows/s), {rows_in(db):,} rows in the ledger")
        if not args.only_map:
            print(f"  map / bare loop throughput: {bare / mapped:.2f}x; map / batch_completion: {batch / mapped:.2f}x; ideal {ideal:.2f} s")
        print(f"  peak RSS {peak / 1024:.0f} MB (before the map {before / 1024:.0f} MB); {n:,} results")
        if args.processes > 1:
            # The helpers start on first use and stay for the session: started (and waited for) before timing.
            from ipyllm import _helpers

            started = time.perf_counter()
            for helper in _helpers.helpers(args.processes - 1):
                helper.ready.wait(120)
            print(f"  {args.processes - 1} helper process(es) ready in {time.perf_counter() - started:.1f} s (once per session)")
            spread, n = ipyllm_map(base_url, [f"{p} (spread)" for p in items], args.concurrency, args.processes)
            rate = args.rows / spread
            label = f"ipyllm.map, processes={args.processes}:"
            print(f"  {label:30}{spread:6.2f} s  ({rate:6.1f} rows/s), {rows_in(db):,} rows in the ledger")
            if not args.only_map:
                print(f"  map(processes={args.processes}) / bare loop: {bare / spread:.2f}x; / batch_completion: {batch / spread:.2f}x")
    finally:
        stub.terminate()


if __name__ == "__main__":
    main()
