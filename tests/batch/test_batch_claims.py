"""Claims on a map's submission (``_batchclaim``), over real HTTP through litellm to the stub: two sessions on one
ledger starting the same batch map at the same instant send it once (one claims, the other waits and attaches);
a claim left by a claimer that is gone is taken over; a budget refusal releases the claim."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _api, _batchjob, _litellm
from ipyllm._batchclaim import Claim
from ipyllm._budget import host_name
from ipyllm.testing import BatchScript, StubServer

from ..conftest import SECRET
from .test_provider_batch import TEMPLATE, creates, reviews, uploads


@pytest.fixture
def batched(live: StubServer, clean_config: ipyllm.LLMConfig) -> StubServer:
    clean_config.update(batch_poll_min_wait=0.01, batch_poll_max_wait=0.05)
    return live


@pytest.fixture
def few_looks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits of a map that finds its map claimed; one that would wait on (for a claim never released) fails."""
    waits: list[float] = []

    def pause(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 200:
            raise AssertionError("still waiting for a claim that should have been taken over or released")
        threading.Event().wait(seconds)

    monkeypatch.setattr(_batchjob, "pause", pause)
    return waits


def claims(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT map_key, session FROM batch_claims").fetchall()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_two_sessions_starting_the_same_map_at_once_send_it_once(
    batched: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few_looks: list[float]
) -> None:
    batched.script_batches(BatchScript(hold=True))
    create_file = _litellm.create_file

    def slow_upload(*args: Any, **kwargs: Any) -> Any:  # both sessions are in flight before either records its batch
        threading.Event().wait(0.3)
        return create_file(*args, **kwargs)

    monkeypatch.setattr(_litellm, "create_file", slow_upload)
    path = tmp_path / "team.sqlite"
    sessions = [
        ipyllm.Session(
            base_url=batched.base_url,
            api_key=SECRET,
            model="gpt-4o-mini",
            usage_db=str(path),
            batch_poll_min_wait=0.01,
            batch_poll_max_wait=0.05,
        )
        for _ in range(2)
    ]
    frame = reviews()
    barrier = threading.Barrier(2)
    handles: list[Any] = [None, None]
    failures: list[BaseException] = []

    def start(number: int) -> None:
        try:
            barrier.wait(5)
            handles[number] = sessions[number].map(TEMPLATE, frame, via="batch", wait=False)
        except BaseException as error:  # reported by the test
            failures.append(error)

    threads = [threading.Thread(target=start, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == [] and all(handle is not None for handle in handles)
    assert len(uploads(batched)) == 1 and len(creates(batched)) == 1
    assert handles[0].ids == handles[1].ids
    assert few_looks  # the second waited for the first's batch
    assert claims(path) == []  # released once the batch was recorded
    batched.release_batches()
    first, second = (handle.result(progress=False) for handle in handles)
    assert first.index.equals(frame.index) and first.notna().all() and second.equals(first)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*), COUNT(DISTINCT batch) FROM usage WHERE tier = 'batch'").fetchone() == (30, 1)
    assert len(uploads(batched)) == 1 and len(creates(batched)) == 1


@pytest.mark.parametrize("gone", ["dead pid", "old"])
def test_a_claim_left_by_a_claimer_that_is_gone_is_taken_over(
    batched: StubServer, monkeypatch: pytest.MonkeyPatch, few_looks: list[float], gone: str
) -> None:
    prepare = _batchjob.MapJob.prepare
    if gone == "dead pid":
        left = {"pid": dead_pid()}
    else:  # alive (this process), but claimed longer ago than a submission takes
        left = {"created": datetime.now(timezone.utc) - timedelta(minutes=11)}

    def prepare_and_find_a_claim(job: _batchjob.MapJob) -> list[str]:
        keys = prepare(job)
        claim = Claim(job.map_key, "gone-session", "ada", host_name(), rows=len(keys), **left)  # type: ignore[arg-type]
        assert _api.session.records.batch_claim(claim) is None
        return keys

    monkeypatch.setattr(_batchjob.MapJob, "prepare", prepare_and_find_a_claim)
    result = ipyllm.map(TEMPLATE, reviews(5), via="batch", progress=False)
    assert result.notna().all()
    assert len(uploads(batched)) == 1 and len(creates(batched)) == 1
    assert few_looks == []  # taken over at once
    assert claims(_api.session.store().path) == []  # type: ignore[union-attr]


def test_a_budget_refusal_releases_the_claim_and_the_next_run_submits(batched: StubServer, few_looks: list[float]) -> None:
    ipyllm.config.update(daily_budget_usd=0.0001)
    frame = reviews()
    with pytest.raises(ipyllm.BudgetExceededError, match="batch of 30 rows was not sent"):
        ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert batched.requests == []
    assert claims(_api.session.store().path) == []  # type: ignore[union-attr]
    ipyllm.config.update(daily_budget_usd=1.0)
    result = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert result.notna().all() and len(creates(batched)) == 1 and few_looks == []
