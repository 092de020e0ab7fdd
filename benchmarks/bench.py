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
    import ipyllm
    from ipyllm._client import load_litellm
    from ipyllm.testing import StubServer

    litellm = load_litellm()
    with StubServer() as stub:
        ipyllm.config.update(base_url=stub.base_url, api_key="sk-bench")
        kwargs = {"model": "gpt-4o-mini", "api_base": stub.base_url, "api_key": "sk-bench", "max_retries": 0, "timeout": 600}
        messages = [{"role": "user", "content": "benchmark"}]
        for _ in range(20):  # warm both paths
            litellm.completion(messages=messages, **kwargs)
            ipyllm.complete("benchmark")
        raw, ours = [], []
        for _ in range(n):
            t = time.perf_counter()
            litellm.completion(messages=messages, **kwargs)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            ipyllm.complete("benchmark")
            ours.append(time.perf_counter() - t)
    r, o = statistics.median(raw) * 1000, statistics.median(ours) * 1000
    print(f"litellm.completion:   median {r:.2f} ms per call to the stub ({n} calls)")
    print(f"ipyllm.complete:      median {o:.2f} ms per call (+{o - r:.2f} ms: retry policy, usage row, cost)")


def frame_at_scale(rows: int = 100_000) -> None:
    from ipyllm._ledger import MemoryLedger, UsageRow, to_frame

    ledger = MemoryLedger()
    now = datetime.now(timezone.utc)
    t = time.perf_counter()
    for i in range(rows):
        ledger.append(
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
        )
    appended = time.perf_counter() - t
    t = time.perf_counter()
    frame = to_frame(ledger.rows())
    built = time.perf_counter() - t
    print(f"ledger append:        {appended / rows * 1e6:.1f} us per row ({rows:,} rows)")
    print(f"usage frame:          {built * 1000:.0f} ms for {len(frame):,} rows")


if __name__ == "__main__":
    load_time()
    call_overhead()
    frame_at_scale()
