"""Ctrl-C during a call, in a real Jupyter kernel: one line, the partial reply kept, the row counted.

The kernel calls the stub server over real HTTP; the test interrupts it (``interrupt_kernel``, as the
notebook's stop button does) only once the server has the request, or once the kernel shows the first
pieces of the reply or the retry note, so no sleep decides what is being interrupted.
"""

from __future__ import annotations

import ast
import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import reply_to, start_kernel, stop_kernel, wait_until

#: From the interrupt to the cell's reply. A one-line error takes well under a second; the margin is for a
#: loaded 2-core machine, and stays far below the 120 s the slow answer or the Retry-After would take.
STOPS_WITHIN = 5.0

#: 60 words: streamed at 0.5 s a piece, the reply would take half a minute.
LONG_PROMPT = " ".join(f"w{i}" for i in range(60))


class Kernel:
    """A real ipykernel, with the iopub messages of each cell kept."""

    def __init__(self, cwd: Path) -> None:
        self.manager, self.client = start_kernel(cwd)
        self.messages: list[dict[str, Any]] = []

    def pump(self, timeout: float = 0.05) -> None:
        """Move what iopub has into ``messages``."""
        try:
            while True:
                self.messages.append(self.client.get_iopub_msg(timeout=timeout))
                timeout = 0.001
        except queue.Empty:
            pass

    def of(self, msg_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["parent_header"].get("msg_id") == msg_id]

    def run(self, code: str, **kwargs: Any) -> dict[str, Any]:
        reply = self.client.execute(code, reply=True, timeout=90, **kwargs)
        assert reply["content"]["status"] == "ok", reply["content"]
        return reply["content"]

    def reply_to(self, msg_id: str, timeout: float) -> dict[str, Any]:
        return dict(reply_to(self.client, msg_id, timeout)["content"])

    def idle(self, msg_id: str) -> None:
        """Wait until the cell's outputs are all in (its idle status comes last)."""

        def done() -> bool:
            self.pump()
            return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in self.of(msg_id))

        wait_until(done, 30, "the cell's outputs")

    def shown(self, msg_id: str) -> list[str]:
        """What the cell shows at the end, as a saved notebook would: each display's last update, as text."""
        displays: dict[str, str] = {}
        for message in self.of(msg_id):
            if message["msg_type"] == "clear_output":
                displays.clear()  # the frontend empties the cell's outputs (wait=False: at once)
                continue
            if message["msg_type"] not in ("display_data", "update_display_data"):
                continue
            key = message["content"].get("transient", {}).get("display_id") or message["header"]["msg_id"]
            data = message["content"]["data"]
            displays[key] = data.get("text/markdown") or data.get("text/plain", "")
        return [text for text in displays.values() if text.strip()]

    def shutdown(self) -> None:
        stop_kernel(self.manager, self.client)


@pytest.fixture
def kernel(stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    """A kernel pointed at the stub, with ipyllm loaded and litellm warmed by one call."""
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_USAGE_DB", str(tmp_path / "usage.sqlite"))
    monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "1")
    monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "300")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    started = Kernel(tmp_path)
    try:
        started.run("%load_ext ipyllm")
        started.run("%llm warm up")
        started.pump()
        yield started
    finally:
        started.shutdown()


def last_row(kernel: Kernel) -> dict[str, Any]:
    columns = ["status", "prompt_tokens", "completion_tokens", "cost_usd", "tokens_estimated", "attempts", "latency_s", "error"]
    expression = f"ipyllm.usage()[{columns!r}].tail(1).to_json(orient='records')"
    content = kernel.run("import ipyllm", user_expressions={"row": expression})
    return json.loads(ast.literal_eval(content["user_expressions"]["row"]["data"]["text/plain"]))[0]


def interrupt(kernel: Kernel, msg_id: str) -> tuple[float, list[str]]:
    """Interrupt the running cell; return how long it took to end, and its error output's lines."""
    interrupted_at = time.monotonic()
    kernel.manager.interrupt_kernel()
    reply = kernel.reply_to(msg_id, timeout=60)
    elapsed = time.monotonic() - interrupted_at
    assert reply["status"] == "error", reply
    kernel.idle(msg_id)
    errors = [m["content"] for m in kernel.of(msg_id) if m["msg_type"] == "error"]
    assert len(errors) == 1, errors
    stderr = [m["content"]["text"] for m in kernel.of(msg_id) if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
    assert stderr == [], stderr
    return elapsed, errors[0]["traceback"]


def one_line(traceback: list[str], ending: str) -> float:
    """The error is exactly ``KeyboardInterrupt: interrupted after N s; <ending>``; returns N."""
    assert len(traceback) == 1 and "\n" not in traceback[0], traceback
    prefix, _, rest = traceback[0].partition("interrupted after ")
    assert prefix == "KeyboardInterrupt: ", traceback
    seconds, _, said = rest.partition(" s; ")
    assert said == ending, traceback
    return float(seconds)


@pytest.mark.kernel
@pytest.mark.parametrize("case", ["slow-answer", "mid-stream", "retry-wait"])
def test_an_interrupted_call_is_one_line_keeps_its_text_and_is_counted(kernel: Kernel, stub: StubServer, case: str) -> None:
    # Twice in one kernel: with IPython's default traceback mode, then with %xmode Verbose (which would
    # print every frame's locals if the error were a traceback).
    for xmode in ("Context", "Verbose"):
        kernel.run(f"%xmode {xmode}")
        sent_before = len(stub.requests)
        if case == "slow-answer":
            stub.script(Fault.slow(120))
            msg_id = kernel.client.execute("%%llm --no-stream\nTake your time")
            wait_until(lambda: len(stub.requests) > sent_before, 60, "the request to reach the server")  # noqa: B023
        elif case == "mid-stream":
            stub.chunk_delay = 0.5
            msg_id = kernel.client.execute(f"%%llm\n{LONG_PROMPT}")

            def pieces_shown() -> bool:
                kernel.pump()
                return any("w2" in text for text in kernel.shown(msg_id))  # noqa: B023

            wait_until(pieces_shown, 60, "the first pieces of the reply in the cell")
        else:
            stub.script(Fault.rate_limit(retry_after=120))
            msg_id = kernel.client.execute("%%llm\nAfter the wait")

            def in_the_wait() -> bool:
                kernel.pump()
                return any("attempt 2/" in text for text in kernel.shown(msg_id))  # noqa: B023

            # The note shows just before the wait begins: the 429 has been answered.
            wait_until(in_the_wait, 60, "the retry note")

        elapsed, traceback = interrupt(kernel, msg_id)
        print(f"{case} ({xmode}): the cell ended {elapsed:.2f} s after the interrupt")
        assert elapsed < STOPS_WITHIN, f"stops at once ({elapsed:.1f} s)"
        stub.chunk_delay = 0.0
        shown = kernel.shown(msg_id)
        row = last_row(kernel)
        assert len(stub.requests) == sent_before + 1, "one request; no retry was sent after the interrupt"

        assert row["status"] == "interrupted"
        assert row["tokens_estimated"] is True
        assert row["attempts"] == 1
        assert row["prompt_tokens"] > 0, "the prompt was sent: it is counted"
        assert row["cost_usd"] > 0, "and priced"
        if case == "mid-stream":
            seconds = one_line(traceback, "the partial reply is kept above")
            assert len(shown) == 1, shown
            kept = shown[0]
            assert kept.startswith("[gpt-4o-mini] w0 w1 w2"), kept
            assert "w59" not in kept, "the reply was cut short"
            assert kept.rstrip().endswith("interrupted</sub>"), "the footer says the reply was interrupted"
            assert row["completion_tokens"] > 0, "the text that came is counted"
        else:
            seconds = one_line(traceback, "no reply had arrived")
            assert shown == [], f"nothing is left in the cell, no note either: {shown}"
            assert row["completion_tokens"] == 0
        assert row["error"] == traceback[0]
        assert abs(row["latency_s"] - seconds) < 0.2, "the row's latency is the time until the interrupt"
