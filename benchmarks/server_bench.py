"""Issue 21's endpoint target: ``/ipyllm/api/summary``, ``/usage`` and ``/calls`` answer in at most 100 ms on a
100,000-row ledger, through a real ``jupyter server`` process with the extension enabled.

Run: ``.venv/bin/python benchmarks/server_bench.py [--rows 100000] [--days 30] [--requests 15] [--postgres]``.
The ledger is a SQLite file in a temporary directory (and, with ``--postgres``, a database on a PostgreSQL server
started in a temporary directory: ``apt-get install postgresql``), filled with rows of 4 models, 3 users and 5
notebooks spread over ``--days`` days up to now. Each figure is the median wall time of ``--requests`` HTTP GETs
(after one to warm up), seen from a client in this process: the whole round trip, Jupyter's authentication included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipyllm._ledger import open_store  # noqa: E402
from ipyllm._locations import parse_location  # noqa: E402
from ipyllm._usage import UsageRow  # noqa: E402

TOKEN = "bench-" + "7" * 20
TARGET_MS = 100.0
ENDPOINTS = (
    "summary",
    "usage?by=model",
    "usage?by=model&since=month",
    "usage?by=day&since=month",
    "usage?by=hour&since=today",
    "usage?by=notebook&since=month",
    "usage?by=user&since=month",
    "calls?limit=50",
)
HAS_NOTEBOOK = "notebook" in {field.name for field in dataclasses.fields(UsageRow)}


def rows(count: int, days: float) -> list[UsageRow]:
    now = datetime.now(timezone.utc)
    step = timedelta(days=days) / count
    made = []
    for number in range(count):
        extra = {"notebook": f"analysis-{number % 5}.ipynb"} if HAS_NOTEBOOK else {}
        made.append(
            UsageRow(
                timestamp=now - step * number,
                session=f"session-{number // 500}",
                cell=number % 40,
                model=("gpt-4o-mini", "gpt-4o", "claude-3-haiku", "ollama/llama3")[number % 4],
                prompt_tokens=100 + number % 50,
                completion_tokens=20 + number % 30,
                total_tokens=120 + number % 80,
                cost_usd=1e-5 * (1 + number % 7),
                latency_s=0.2 + (number % 10) / 10,
                status="error" if number % 97 == 0 else "ok",
                user=("ada", "bob", "cy")[number % 3],
                **extra,  # type: ignore[arg-type]
            )
        )
    return made


def fill(location: str, made: list[UsageRow]) -> None:
    store = open_store(parse_location(location))
    assert store is not None
    try:
        for start in range(0, len(made), 10_000):
            store.append_many(made[start : start + 10_000])
        flush = getattr(store, "flush", None)  # a team ledger's writer thread moves the rows from its spool
        if flush is not None and not flush(600):
            raise SystemExit("the rows did not reach the PostgreSQL ledger within 10 minutes")
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def serve(location: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``jupyter server`` with ipyllm enabled by its own jupyter-config JSON, reading ``location``."""
    config = folder / "config" / "jupyter_server_config.d"
    config.mkdir(parents=True, exist_ok=True)
    (config / "ipyllm.json").write_text((ROOT / "jupyter-config" / "server-config" / "ipyllm.json").read_text())
    environ = {**os.environ, "JUPYTER_CONFIG_DIR": str(folder / "config"), "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
               "PYTHONPATH": str(ROOT), "LLM_USAGE_DB": location, "LLM_USER": "ada", "LLM_DAILY_BUDGET_USD": "5"}  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", f"--port={port}",
               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}"]  # fmt: skip
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get(f"{base}/api/status")
            return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("jupyter server did not start within 60 s")


def measure(kind: str, location: str, requests: int) -> bool:
    """Print each endpoint's median; whether all are within the target."""
    within = True
    with tempfile.TemporaryDirectory() as folder:
        process, base = serve(location, Path(folder))
        try:
            for endpoint in ENDPOINTS:
                url = f"{base}/ipyllm/api/{endpoint}"
                answer = json.loads(get(url))  # warm: the store opens on the first request
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    get(url)
                    times.append(time.perf_counter() - started)
                median = statistics.median(times) * 1000
                within &= median <= TARGET_MS
                listed = answer.get("rows", answer.get("calls", []))
                size = f"{answer['today']['calls']} calls today" if "today" in answer else f"{len(listed)} rows"
                print(f"{kind:10} /ipyllm/api/{endpoint:30} median {median:6.1f} ms  (max {max(times) * 1000:6.1f}; {size})")
        except Exception:
            print((Path(folder) / "server.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=30.0, help="the rows are spread evenly over this many days up to now")
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--postgres", action="store_true", help="also on a PostgreSQL ledger (needs postgresql installed)")
    options = parser.parse_args()
    made = rows(options.rows, options.days)
    print(f"{options.rows:,} rows over {options.days:g} days; target <= {TARGET_MS:.0f} ms per request")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        location = str(Path(folder) / "usage.sqlite")
        fill(location, made)
        ok &= measure("sqlite", location, options.requests)
    if options.postgres:
        from tests.postgres.pg import PostgresServer, find_binaries

        binaries = find_binaries()
        if binaries is None:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        server = PostgresServer(binaries, fsync=True).start()
        try:
            location = server.url(server.new_database())
            fill(location, made)
            ok &= measure("postgresql", location, options.requests)
        finally:
            server.remove()
    print("all within target" if ok else "SOME ABOVE TARGET")


if __name__ == "__main__":
    main()
