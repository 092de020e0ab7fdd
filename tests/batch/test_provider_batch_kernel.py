"""A provider batch outlives the kernel that sent it: two real kernels on one SQLite ledger.

The first kernel sends a 30-row map via the Batch API and waits; the stub holds the batch ``in_progress``. The
second kernel runs the same map: it attaches (no second upload or batch), and Ctrl-C (a real interrupt) stops its
waiting in one line, not the batch. The first kernel is killed while waiting. Once the stub lets the batch finish,
the second kernel runs the map again: it takes the results, and every row is in the ledger once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from ipyllm.testing import BatchScript, StubServer

from ..conftest import SECRET
from ..helpers import reply_to, start_kernel, stop_kernel, wait_for

MAP = """
import pandas as pd
frame = pd.DataFrame({"text": [f"review {i}" for i in range(30)]}, index=[f"r{i}" for i in range(30)]).sample(frac=1, random_state=3)
result = ipyllm.map("Classify: {text}", frame, via="batch", progress=False)
print("answered", int(result.notna().sum()), "aligned", bool(result.index.equals(frame.index)))
"""


@pytest.mark.kernel
def test_a_batch_outlives_a_killed_kernel_and_another_attaches_once(
    stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "usage.sqlite"
    for name, value in {
        "LLM_BASE_URL": stub.base_url,
        "LLM_API_KEY": SECRET,
        "LLM_USAGE_DB": str(ledger),
        "LLM_BATCH_POLL_MIN_WAIT": "0.05",
        "LLM_BATCH_POLL_MAX_WAIT": "0.2",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stub.script_batches(BatchScript(hold=True))

    def looks() -> int:
        """Retrieves of the batch so far (both kernels')."""
        return sum(r.method == "GET" and r.path.startswith("/v1/batches/") for r in list(stub.requests))

    kernels = [start_kernel(tmp_path) for _ in range(2)]
    (_, first), (second_manager, second) = kernels
    try:
        for _, client in kernels:
            reply = client.execute("import os, ipyllm; ipyllm._litellm.load_litellm()", reply=True, timeout=120)
            assert reply["content"]["status"] == "ok", reply["content"]
        pid = int(
            first.execute("", user_expressions={"pid": "os.getpid()"}, reply=True)["content"]["user_expressions"]["pid"]["data"][
                "text/plain"
            ]
        )
        first.execute(MAP)  # sends the batch, then waits for it
        assert wait_for(lambda: looks() >= 1, timeout=120)

        # The second kernel runs the same map while the batch is in progress: it attaches; Ctrl-C stops its waiting.
        waiting = second.execute(MAP)
        said = ""
        while "attached to provider batch" not in said:
            message = second.get_iopub_msg(timeout=60)
            if message["msg_type"] == "stream":
                said += message["content"]["text"]
        seen = looks()
        assert wait_for(lambda: looks() >= seen + 2, timeout=60)  # waiting: looking at the batch again and again
        second_manager.interrupt_kernel()
        reply = reply_to(second, waiting, timeout=60)["content"]
        assert reply["status"] == "error" and reply["ename"] == "BatchDetached", reply
        [line] = reply["traceback"]
        assert "goes on" in line and "run the same map again" in line and ".cancel()" in line
        assert len(stub.requests_to("/v1/files")) == 1 and len(stub.requests_to("/v1/batches")) == 1

        os.kill(pid, signal.SIGKILL)  # the first kernel dies while waiting
        time.sleep(0.5)
        stub.release_batches()
        done = second.execute(MAP, reply=True, timeout=120)
        assert done["content"]["status"] == "ok", done["content"]
        printed = ""
        deadline = time.monotonic() + 30
        while "aligned" not in printed and time.monotonic() < deadline:
            message = second.get_iopub_msg(timeout=30)
            if message["msg_type"] == "stream" and message["parent_header"].get("msg_id") == done["parent_header"]["msg_id"]:
                printed += message["content"]["text"]
        assert "answered 30 aligned True" in printed
    finally:
        for manager, client in kernels:
            try:
                stop_kernel(manager, client)
            except Exception:
                pass

    assert len(stub.requests_to("/v1/files")) == 1 and len(stub.requests_to("/v1/batches")) == 1
    with sqlite3.connect(ledger) as connection:
        rows = connection.execute("SELECT status, tier, batch FROM usage WHERE status != 'cached'").fetchall()
        batches = connection.execute("SELECT status FROM batches").fetchall()
        keys = connection.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
    assert len(rows) == 30 and {(status, tier) for status, tier, _ in rows} == {("ok", "batch")}  # each row once
    assert batches == [("collected",)] and keys == 30
