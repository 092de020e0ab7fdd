"""Issue 18's three performance targets, in one run: does the pipeline pay for itself?

Run: ``.venv/bin/python benchmarks/targets.py [--rounds 3]`` on a quiet machine (``uptime`` below ~1: each
contender takes a core, and the figures are ratios of wall times). Everything is offline, against the stub
server in a process of its own, answering in 50 ms (the ledger is a SQLite file in a temporary directory).

1. **In-process map**: ``ipyllm.map(1,000 prompts, concurrency=32)`` against a bare ``litellm.acompletion`` +
   ``Semaphore(32)`` loop, both warm, each first in turn; target ≥ 0.9x the loop's throughput.
2. **One call**: ``ipyllm.complete(prompt)`` against ``litellm.completion(...)`` as a user would call it (the
   median of 300 calls each, taken turn about, to a stub that answers at once); target ≤ 1.05x its time.
   ``bench.py call`` shows ipyllm's own time per call, against litellm's time inside ``complete``.
3. **A first map(processes=2) in a fresh kernel** against ``litellm.batch_completion(max_workers=32)``; target
   ≥ 1.3x its throughput. Each contender runs in a fresh process, timed from the first cell on: ``%load_ext
   ipyllm`` then ``ipyllm.map(..., processes=2)`` in an IPython shell, against ``import litellm`` then
   ``litellm.batch_completion(...)``: both pay litellm's import once, ipyllm in this process and in its helper
   at once. Also shown, against a warm ``batch_completion``: the map alone, once the kernel's litellm is warm
   (a notebook's next cell, a few seconds after ``%load_ext``), with the helper not yet started (its start is
   then all on the map's clock), and with it started early by ``%load_ext`` (``LLM_PROCESSES=2``).

ipyllm's modules are byte-compiled first, as ``pip install`` leaves an installed package (litellm's are): this
machine sets ``PYTHONDONTWRITEBYTECODE=1``, under which a source checkout would compile every ipyllm module again
in each process (0.2 s in the kernel's ``%load_ext``, as much in each helper).
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch_bench  # the contenders of the batch benchmark, shared

MODEL, KEY = batch_bench.MODEL, batch_bench.KEY
A, B = TypeVar("A"), TypeVar("B")


def in_turn(turn: int, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """``(first(), second())``, ``second`` run first on odd turns: neither contender always runs on the machine the
    other left (warmer caches, a busier disk, a clock that changed speed)."""
    if turn % 2:
        b = second()
        return first(), b
    a = first()
    return a, second()


def in_process_map(base_url: str, rounds: int, rows: int, concurrency: int) -> list[float]:
    """Throughput ratios map / bare loop, one per round (each round: both on new prompts, each first in turn)."""
    batch_bench.bare_loop(base_url, batch_bench.prompts(40), concurrency)
    batch_bench.ipyllm_map(base_url, [f"warm {i}" for i in range(40)], concurrency)
    ratios = []
    for round_ in range(rounds):
        items = batch_bench.prompts(rows)
        bare, (mapped, _) = in_turn(
            round_,
            functools.partial(batch_bench.bare_loop, base_url, [f"{p} (bare {round_})" for p in items], concurrency),
            functools.partial(batch_bench.ipyllm_map, base_url, [f"{p} (map {round_})" for p in items], concurrency),
        )
        ratios.append(bare / mapped)
        print(f"  round {round_ + 1}: bare loop {bare:5.2f} s, map {mapped:5.2f} s: {bare / mapped:.2f}x  (load {os.getloadavg()[0]:.2f})")
    return ratios


def one_call(base_url: str, rounds: int, calls: int) -> list[float]:
    """Time ratios complete / litellm.completion, one per round of ``calls`` each (medians)."""
    import ipyllm
    from ipyllm._litellm import load_litellm

    litellm = load_litellm()
    messages = [{"role": "user", "content": "benchmark"}]

    def bare() -> None:
        litellm.completion(model=MODEL, messages=messages, api_base=base_url, api_key=KEY, max_retries=0)

    def ours() -> None:
        ipyllm.complete("benchmark")

    ipyllm.config.update(base_url=base_url, api_key=KEY, model=MODEL)
    for _ in range(20):
        bare()
        ours()

    def timed(call: Callable[[], None]) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    ratios = []
    for round_ in range(rounds):
        # Call by call, each first in turn: a machine that speeds up or slows down during the round (it does, by up to
        # a third here) weighs on both alike, where one block after the other credited it to one of them.
        pairs = [in_turn(turn, functools.partial(timed, bare), functools.partial(timed, ours)) for turn in range(calls)]
        medians = {name: statistics.median(pair[i] for pair in pairs) for i, name in enumerate(("litellm.completion", "ipyllm.complete"))}
        ratio = medians["ipyllm.complete"] / medians["litellm.completion"]
        ratios.append(ratio)
        shown = ", ".join(f"{name} {value * 1000:.2f} ms" for name, value in medians.items())
        print(f"  round {round_ + 1}: {shown}: {ratio:.3f}x  (load {os.getloadavg()[0]:.2f})")
    return ratios


_FRESH_MAP = """
import json, os, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()  # a kernel has IPython already: its clock starts at %load_ext
started = time.perf_counter()
shell.run_line_magic("load_ext", "ipyllm")
import ipyllm
from ipyllm import _litellm
loaded = time.perf_counter()
ipyllm.config.update(base_url=sys.argv[1], api_key=sys.argv[2], model=sys.argv[3])
items = json.loads(sys.argv[4])
if sys.argv[5] in ("warm", "early"):  # the kernel's litellm warm, as a while after %load_ext (early: the helper too)
    _litellm.load_litellm()
    started = time.perf_counter()
mapped = time.perf_counter()
result = ipyllm.map("{value}", items, concurrency=int(sys.argv[6]), progress=False, processes=2)
ended = time.perf_counter()
assert result.notna().all()
print(json.dumps({"total": ended - started, "map": ended - mapped, "load": loaded - started}))
"""

_FRESH_BATCH = """
import json, os, sys, time
started = time.perf_counter()
import litellm
imported = time.perf_counter()
items = json.loads(sys.argv[4])
litellm.batch_completion(
    model=sys.argv[3], messages=[[{"role": "user", "content": p}] for p in items], api_base=sys.argv[1], api_key=sys.argv[2],
    max_workers=int(sys.argv[6]), max_retries=0,
)
ended = time.perf_counter()
print(json.dumps({"total": ended - started, "batch": ended - imported, "import": imported - started}))
"""


def fresh(code: str, base_url: str, items: list[str], concurrency: int, mode: str) -> dict[str, float]:
    """One contender in a fresh process; ``early``: ``LLM_PROCESSES=2``, so that ``%load_ext`` starts the helper."""
    environment = {
        **{name: value for name, value in os.environ.items() if name != "LLM_PROCESSES"},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])),
    }
    if mode == "early":
        environment["LLM_PROCESSES"] = "2"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), base_url, KEY, MODEL, json.dumps(items), mode, str(concurrency)],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def fresh_kernel(base_url: str, rounds: int, rows: int, concurrency: int) -> tuple[list[float], list[float], list[float]]:
    """Throughput ratios of a first map(processes=2) in a fresh kernel over batch_completion: from the first cell;
    and the map alone with the kernel's litellm warm, the helper started by the map or by ``%load_ext`` (against a
    warm batch_completion)."""
    from_load, warm_only, early_only = [], [], []
    for round_ in range(rounds):
        items = [f"{p} (fresh {round_})" for p in batch_bench.prompts(rows)]
        batch, cold = in_turn(
            round_,
            functools.partial(fresh, _FRESH_BATCH, base_url, [f"{p} (batch)" for p in items], concurrency, "cold"),
            functools.partial(fresh, _FRESH_MAP, base_url, items, concurrency, "cold"),
        )
        warm, early = in_turn(
            round_,
            functools.partial(fresh, _FRESH_MAP, base_url, [f"{p} (warm)" for p in items], concurrency, "warm"),
            functools.partial(fresh, _FRESH_MAP, base_url, [f"{p} (early)" for p in items], concurrency, "early"),
        )
        from_load.append(batch["total"] / cold["total"])
        warm_only.append(batch["batch"] / warm["map"])
        early_only.append(batch["batch"] / early["map"])
        print(
            f"  round {round_ + 1}: import litellm + batch_completion {batch['total']:5.2f} s "
            f"({batch['import']:.2f} + {batch['batch']:.2f}); "
            f"%load_ext + map(processes=2) {cold['total']:5.2f} s: {from_load[-1]:.2f}x; "
            f"map(processes=2) with litellm warm, helper cold {warm['map']:5.2f} s: {warm_only[-1]:.2f}x; "
            f"helper started by %load_ext {early['map']:5.2f} s: {early_only[-1]:.2f}x  (load {os.getloadavg()[0]:.2f})"
        )
    return from_load, warm_only, early_only


def shown(values: list[float]) -> str:
    """The rounds' range and median: one round's figure moves by a tenth or more with the machine."""
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{min(values):.2f}-{max(values):.2f}x, median {statistics.median(values):.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--only", choices=["map", "call", "fresh"], action="append", help="run these targets only")
    args = parser.parse_args()
    only = set(args.only or ["map", "call", "fresh"])
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "ipyllm", quiet=1)
    folder = tempfile.mkdtemp(prefix="ipyllm-targets-")
    os.environ["LLM_USAGE_DB"] = os.path.join(folder, "usage.sqlite")
    stub, base_url = batch_bench.start_stub(0.05)
    verdicts = []
    print(f"2-core machine, load average {os.getloadavg()[0]:.2f} at the start; stub latency 50 ms")
    try:
        if "map" in only:
            print(f"1. in-process map, {args.rows:,} prompts at concurrency {args.concurrency} (target >= 0.90x the bare loop)")
            ratios = in_process_map(base_url, args.rounds, args.rows, args.concurrency)
            verdicts.append(f"in-process map / bare acompletion loop: {shown(ratios)} (target >= 0.90x)")
        if "call" in only:
            print(f"2. one call, medians of {args.calls} calls to a stub that answers at once (target <= 1.05x litellm.completion)")
            quick, quick_url = batch_bench.start_stub(0.0)  # latency would only dilute the difference
            try:
                ratios = one_call(quick_url, args.rounds, args.calls)
            finally:
                quick.terminate()
            verdicts.append(f"complete / litellm.completion: {shown(ratios)} (target <= 1.05x)")
        if "fresh" in only:
            print(f"3. a first map(processes=2) in a fresh kernel, {args.rows:,} prompts (target >= 1.30x batch_completion)")
            from_load, warm_only, early_only = fresh_kernel(base_url, args.rounds, args.rows, args.concurrency)
            verdicts.append(f"fresh kernel, map(processes=2) / batch_completion, from the first cell: {shown(from_load)} (target >= 1.30x)")
            verdicts.append(f"  the map alone, kernel's litellm warm, helper cold, / warm batch_completion: {shown(warm_only)}")
            verdicts.append(f"  the map alone, helper started by %load_ext (LLM_PROCESSES=2), / warm batch_completion: {shown(early_only)}")
    finally:
        stub.terminate()
        from ipyllm import _api

        _api.session.close()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
