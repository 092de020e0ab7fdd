"""``map(via="batch")`` on 10,000 rows: building and submitting the request file, and taking its 10,000 results.

Run: ``.venv/bin/python benchmarks/provider_batch.py`` (``--rows N``, ``--runs N``). The stub server runs in a
process of its own, as a provider does. Two phases are timed, each in a fresh session on a fresh SQLite ledger:

- **submit**: ``map(template, frame, via="batch", wait=False)``: every row prepared (messages, cache key, a cache
  look-up), the JSONL file built, uploaded (``POST /v1/files``), the batch created and recorded;
- **collect**: once the stub has finished the batch, ``handle.collect()``: the output file downloaded and parsed,
  one usage row and one cache entry per line written in one transaction, the result aligned to the frame.

For each: wall time, this process's CPU time (the client's own work; the stub's is in its own process), and the
peak of Python allocations above what was allocated before the phase (tracemalloc, measured in a second run of
the phase, since tracing slows it down), with the frame itself allocated before.
Everything is offline: the stub server echoes the prompts, so rows of one length share one usage (the frame's
reviews have 120 lengths). ``--distinct`` makes every row's usage its own, as a provider's are: the output file, as
downloaded, has each line's ``prompt_tokens`` raised by its row's number and some of them reported as cached
(``prompt_tokens_details.cached_tokens``), so that each of the 10,000 rows is priced on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

TEMPLATE = "Classify the sentiment of this review as positive, negative or neutral. Review #{n}: {text}"


def start_stub() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "ipyllm.testing"], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+/v1)", line)
    assert match, line
    return process, match[1]


def frame(rows: int, run: int) -> Any:
    import pandas as pd

    # Reviews of many lengths (1 to 120 extra words), as real ones are: the rows' usages differ.
    texts = [
        f"run {run}: it arrived on day {i % 31} and was {'great' if i % 3 else 'broken'}" + " really" * (i * 7919 % 120)
        for i in range(rows)
    ]
    return pd.DataFrame({"n": range(rows), "text": texts}, index=[f"review-{i}" for i in range(rows)])


def distinct_usages(data: bytes) -> bytes:
    """The output file with every line's usage its own: ``prompt_tokens`` raised by the line's number, some cached."""
    lines = []
    for number, text in enumerate(data.decode().splitlines()):
        line = json.loads(text)
        usage = ((line.get("response") or {}).get("body") or {}).get("usage")
        if usage:
            usage["prompt_tokens"] += number
            usage["total_tokens"] += number
            usage["prompt_tokens_details"] = {"cached_tokens": number * 37 % usage["prompt_tokens"], "audio_tokens": 0}
        lines.append(json.dumps(line) + "\n")
    return "".join(lines).encode()


def one_run(url: str, rows: int, run: int, traced: bool, distinct: bool = False) -> dict[str, float]:
    import ipyllm
    from ipyllm import _litellm

    directory = Path(tempfile.mkdtemp(prefix="ipyllm-provider-batch-"))
    session = ipyllm.Session(base_url=url, api_key="sk-stub", usage_db=str(directory / "usage.sqlite"))
    session.config.update(batch_poll_min_wait=0.01, batch_poll_max_wait=0.05)
    data = frame(rows, run)
    figures: dict[str, float] = {}

    def phase(name: str, action: Any) -> Any:
        if traced:
            tracemalloc.start()
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        value = action()
        figures[f"{name}_wall"] = time.perf_counter() - wall
        figures[f"{name}_cpu"] = time.process_time() - cpu
        if traced:
            figures[f"{name}_peak_mb"] = (tracemalloc.get_traced_memory()[1] - before) / 1e6
            tracemalloc.stop()
        return value

    handle = phase("submit", lambda: session.map(TEMPLATE, data, via="batch", wait=False, progress=False))
    while not handle.refresh().ended:
        time.sleep(0.01)
    download = _litellm.file_content
    if distinct:
        # The file as a provider whose usages all differ would send it: downloaded for real (timed), then replaced by
        # its rewritten copy, made before the phase.
        assert handle.parts[0].output_file_id is not None
        rewritten = distinct_usages(handle.link.call("benchmark", download, handle.parts[0].output_file_id))

        def distinct_download(connection: dict[str, Any], provider: str, file_id: str) -> bytes:
            data = download(connection, provider, file_id)
            return rewritten if file_id == handle.parts[0].output_file_id else data

        _litellm.file_content = distinct_download  # type: ignore[assignment]
    try:
        result = phase("collect", handle.collect)
    finally:
        _litellm.file_content = download  # type: ignore[assignment]
    assert result is None and handle.rows is not None
    answered = handle.rows.batch.result
    assert answered.notna().all() and answered.index.equals(data.index), "every row answered, aligned"
    usage = session.usage()
    assert len(usage) == rows
    figures["usages"] = len(usage.groupby(["prompt_tokens", "completion_tokens", "cached_tokens"], dropna=False))
    session.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--distinct", action="store_true", help="every row's usage its own (each row priced on its own)")
    args = parser.parse_args()
    from ipyllm._litellm import load_litellm

    load_litellm()
    process, url = start_stub()
    try:
        one_run(url, 100, -1, traced=False)  # warm: litellm's batch modules imported, the file API's client made
        print(f"{args.rows:,} rows, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        print("run | submit: wall / client CPU / peak MB | collect: wall / client CPU / peak MB")
        for run in range(args.runs):
            timed = one_run(url, args.rows, run * 2, traced=False, distinct=args.distinct)
            traced = one_run(url, args.rows, run * 2 + 1, traced=True, distinct=args.distinct)
            print(
                f"{run + 1} | {timed['submit_wall']:.2f} s / {timed['submit_cpu']:.2f} s / {traced['submit_peak_mb']:.0f} MB"
                f" | {timed['collect_wall']:.2f} s / {timed['collect_cpu']:.2f} s / {traced['collect_peak_mb']:.0f} MB"
                f" ({timed['usages']:.0f} distinct usages priced)"
            )
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
