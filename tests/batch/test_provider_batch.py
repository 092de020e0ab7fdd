"""``map(via="batch")`` over real HTTP through litellm to the stub's Files and Batches APIs: one upload and one
create, the request file as live map's calls, results aligned and priced at the batch price, attach instead of a
second batch, nothing sent after completion, the budget's reservation and refusal, per-line failures,
cancellation, expiry and Ctrl-C while waiting. Expected prices come from litellm's price map, not from ipyllm."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError

import ipyllm
from ipyllm import _api, _batchjob, _provider_batch
from ipyllm._litellm import load_litellm
from ipyllm.testing import BatchScript, Fault, StubServer

from ..helpers import chat_requests

TEMPLATE = "Classify as positive, negative or neutral: {text}"


@pytest.fixture
def batched(live: StubServer, clean_config: ipyllm.LLMConfig) -> StubServer:
    """The stub, and polls that look again at once (the waits still grow, from 10 ms to 50 ms)."""
    clean_config.update(batch_poll_min_wait=0.01, batch_poll_max_wait=0.05)
    return live


def reviews(rows: int = 30, seed: int = 7) -> pd.DataFrame:
    labels = [f"review-{i}" for i in range(rows)]
    return pd.DataFrame({"text": [f"review text number {i}" for i in range(rows)]}, index=labels).sample(frac=1, random_state=seed)


def uploads(stub: StubServer) -> list[Any]:
    return stub.requests_to("/v1/files")


def creates(stub: StubServer) -> list[Any]:
    return stub.requests_to("/v1/batches")


def request_lines(stub: StubServer) -> list[dict[str, Any]]:
    """Every line of every request file the stub received."""
    lines = []
    for stored in list(stub.batches.files.values()):
        if stored.purpose == "batch":
            lines += [json.loads(line) for line in stored.data.decode().splitlines()]
    return lines


def ledger(path: Path | None = None) -> sqlite3.Connection:
    return sqlite3.connect(path or _api.session.store().path)  # type: ignore[union-attr]


def batch_rows(batch_ids: list[str] | None = None) -> list[tuple[Any, ...]]:
    """The ledger's rows of provider batches: (status, tier, cost, prompt, completion, error, batch)."""
    with ledger() as connection:
        rows = connection.execute(
            "SELECT status, tier, cost_usd, prompt_tokens, completion_tokens, error, batch FROM usage WHERE tier = 'batch' ORDER BY id"
        ).fetchall()
    return [row for row in rows if batch_ids is None or row[6] in batch_ids]


# -- submission and results ------------------------------------------------------------------------------------------
def test_a_30_row_map_is_one_upload_and_one_batch_aligned_and_priced_at_the_batch_price(batched: StubServer) -> None:
    frame = reviews()
    result = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)

    assert len(uploads(batched)) == 1 and len(creates(batched)) == 1
    assert chat_requests(batched) == []  # nothing went live
    assert isinstance(result, pd.Series) and result.index.equals(frame.index)  # the shuffled index, in its order
    for label, row in frame.iterrows():
        assert result[label] == f"[gpt-4o-mini] {TEMPLATE.format(text=row['text'])}"

    prices = load_litellm().model_cost["gpt-4o-mini"]
    rows = batch_rows()
    assert len(rows) == 30 and {row[0] for row in rows} == {"ok"} and {row[1] for row in rows} == {"batch"}
    for _status, _tier, cost, prompt, completion, _error, _batch in rows:
        expected = prompt * prices["input_cost_per_token_batches"] + completion * prices["output_cost_per_token_batches"]
        assert cost == pytest.approx(expected, rel=1e-9)
        assert cost == pytest.approx((prompt * prices["input_cost_per_token"] + completion * prices["output_cost_per_token"]) / 2)
    frame_rows = ipyllm.usage()
    assert set(frame_rows["tier"]) == {"batch"} and frame_rows["batch"].nunique() == 1
    recorded = ipyllm.batches()
    assert list(recorded["status"]) == ["collected"] and recorded["rows"].iloc[0] == 30
    assert recorded["id"].iloc[0] == frame_rows["batch"].iloc[0]


def test_files_and_batches_calls_that_fail_for_a_moment_are_retried_one_request_per_attempt(batched: StubServer) -> None:
    """The Files and Batches calls run under the session's retry policy: an upload refused with a 503, then a 429,
    is sent three times and the map ends as if nothing had happened; with no retries, one 503 ends the map in one line."""
    ipyllm.config.update(retry_min_wait=0.01, retry_max_wait=0.05)
    batched.script_api(Fault.status(503), Fault.rate_limit(retry_after=0.01))
    frame = reviews(5)
    first = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert [request.fault for request in uploads(batched)] == ["status", "status", ""]
    assert len(creates(batched)) == 1 and first.notna().all()
    ipyllm.config.update(num_retries=0)
    batched.script_api(Fault.status(503))
    with pytest.raises(ipyllm.errors.ProviderUnavailableError, match="503"):
        ipyllm.map(TEMPLATE, reviews(3, seed=8).assign(text=lambda f: f["text"] + " again"), via="batch", progress=False)
    assert len(uploads(batched)) == 4, "no retries: one attempt"


def test_the_request_file_is_what_live_map_sends_named_by_each_rows_cache_key(batched: StubServer) -> None:
    frame = reviews(4)
    ipyllm.map(TEMPLATE, frame, via="batch", progress=False, temperature=0.2, max_tokens=20)
    lines = {line["custom_id"]: line for line in request_lines(batched)}
    # The cache keys the map wrote are the lines' names: a later live map finds them and sends nothing.
    with ledger() as connection:
        assert set(lines) == {key for (key,) in connection.execute("SELECT key FROM cache")}
    live = ipyllm.map(TEMPLATE, frame, progress=False, temperature=0.2, max_tokens=20)
    assert chat_requests(batched) == [] and live.notna().all()
    # The body of a line is the body the live call sends (one row, sent live with resume=False).
    ipyllm.map(TEMPLATE, frame.head(1), progress=False, temperature=0.2, max_tokens=20, resume=False)
    sent = chat_requests(batched)[0].body
    line = next(line for line in lines.values() if line["body"]["messages"] == sent["messages"])
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert {k: v for k, v in line["body"].items()} == {k: v for k, v in sent.items() if k not in ("stream",)}


def test_rows_in_the_cache_are_not_sent_and_duplicates_share_a_line(batched: StubServer) -> None:
    texts = [f"text {i}" for i in range(12)]
    ipyllm.map("Say {value}", texts[:4], progress=False)  # four answered live
    data = texts + texts[:6]  # six rows twice
    result = ipyllm.map("Say {value}", data, via="batch", progress=False)
    assert len(request_lines(batched)) == 8  # 12 distinct, 4 in the cache
    assert result.tolist() == [f"[gpt-4o-mini] Say {text}" for text in data]
    assert len(batch_rows()) == 8


def test_after_completion_the_same_map_sends_nothing(batched: StubServer) -> None:
    frame = reviews()
    first = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    before = len(batched.requests)
    again = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert len(batched.requests) == before  # no upload, no create, not even a look
    assert again.equals(first)
    assert len(batch_rows()) == 30  # each row billed once; the second run's rows are cached, cost 0
    second = ipyllm.last_batch()
    assert second is not None and second.tally.cached == 30


def test_a_map_larger_than_a_file_is_split_into_several_batches(batched: StubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_batchjob.MapJob, "max_requests", 10)
    frame = reviews(25)
    result = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert len(uploads(batched)) == 3 and len(creates(batched)) == 3
    assert result.notna().all() and result.index.equals(frame.index)
    assert list(ipyllm.batches()["parts"]) == [3, 3, 3]


def test_a_provider_litellm_cannot_batch_and_a_bad_via_are_refused_in_one_line(batched: StubServer) -> None:
    with pytest.raises(ipyllm.SettingError, match=r"cannot send ollama models .* it can for openai, azure") as refused:
        ipyllm.map(TEMPLATE, reviews(3), via="batch", model="ollama/llama3", progress=False)
    assert "\n" not in str(refused.value)
    with pytest.raises(ipyllm.SettingError, match=r"via must be 'live'.*or 'batch'"):
        ipyllm.map(TEMPLATE, reviews(3), via="batches", progress=False)
    with pytest.raises(ipyllm.SettingError, match="wait=False goes with via='batch'"):
        ipyllm.map(TEMPLATE, reviews(3), wait=False, progress=False)
    assert batched.requests == []


def test_amap_via_batch(batched: StubServer) -> None:
    frame = reviews(5)
    result = asyncio.run(ipyllm.amap(TEMPLATE, frame, via="batch", progress=False))
    assert result.index.equals(frame.index) and result.notna().all()
    assert len(creates(batched)) == 1


# -- outliving the kernel ---------------------------------------------------------------------------------------------
def test_the_same_map_in_another_session_attaches_to_the_running_batch(batched: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    batched.script_batches(BatchScript(hold=True))
    frame = reviews()
    handle = ipyllm.map(TEMPLATE, frame, via="batch", wait=False)
    assert isinstance(handle, ipyllm.ProviderBatch) and "validating" in repr(handle)
    other = ipyllm.Session(config=ipyllm.config)  # another session on the same ledger file
    attached = other.map(TEMPLATE, frame, via="batch", wait=False)
    assert attached.ids == handle.ids
    assert len(uploads(batched)) == 1 and len(creates(batched)) == 1
    assert "attached to provider batch" in capsys.readouterr().err
    batched.release_batches()
    result = attached.result(progress=False)
    assert result.index.equals(frame.index) and result.notna().all()
    assert handle.result(progress=False).equals(result)  # taken by the other session: from the cache
    assert len(batch_rows()) == 30  # each row once
    assert len(uploads(batched)) == 1 and len(creates(batched)) == 1


def test_ipyllm_batch_waits_for_and_takes_a_recorded_batch(batched: StubServer) -> None:
    batched.script_batches(BatchScript(hold=True))
    handle = ipyllm.map(TEMPLATE, reviews(6), via="batch", wait=False)
    found = ipyllm.batch(handle.ids[0])
    assert found.status == "in_progress" and "in_progress" in repr(found)
    batched.release_batches()
    result = found.result(progress=False)
    assert result.index.name == "custom_id" and len(result) == 6 and result.notna().all()
    assert list(ipyllm.batches()["status"]) == ["collected"]
    with pytest.raises(ipyllm.SettingError, match="no provider batch 'batch_nope'"):
        ipyllm.batch("batch_nope")


def test_ctrl_c_while_waiting_leaves_the_batch_running_and_the_map_attaches_again(
    batched: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched.script_batches(BatchScript(polls=3))

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    frame = reviews(8)
    with monkeypatch.context() as patched, pytest.raises(ipyllm.BatchDetached) as stopped:
        patched.setattr(_provider_batch, "pause", ctrl_c)
        ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    line = stopped.value._render_traceback_()
    assert len(line) == 1 and "goes on" in line[0] and "run the same map again" in line[0]
    assert f"ipyllm.batch('{stopped.value.handle.id}').cancel()" in line[0]
    assert isinstance(stopped.value, KeyboardInterrupt)
    assert list(ipyllm.batches()["status"]) != ["collected"] and batch_rows() == []
    result = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert result.notna().all() and len(creates(batched)) == 1 and len(batch_rows()) == 8


# -- budgets -------------------------------------------------------------------------------------------------------------
def test_a_batch_over_the_budget_is_refused_before_the_upload(batched: StubServer) -> None:
    ipyllm.config.update(daily_budget_usd=0.0001)
    with pytest.raises(ipyllm.BudgetExceededError) as refused:
        ipyllm.map(TEMPLATE, reviews(), via="batch", progress=False)
    message = refused.value.message
    assert "batch of 30 rows was not sent" in message and "daily_budget_usd" in message and "$0.0001" in message
    assert "\n" not in message
    assert batched.requests == []  # 0 requests: no upload, no batch
    assert [row.status for row in _api.session.ledger.rows()] == ["over_budget"]


def test_a_submitted_batch_holds_its_estimate_for_every_session_on_the_ledger(batched: StubServer) -> None:
    batched.script_batches(BatchScript(hold=True))
    ipyllm.config.update(daily_budget_usd=1.0, max_tokens=50)
    handle = ipyllm.map(TEMPLATE, reviews(), via="batch", wait=False)
    with ledger() as connection:
        holds = connection.execute("SELECT id, amount, pid, expires_us - created_us FROM holds").fetchall()
    [(hold_id, amount, pid, lifetime)] = holds
    assert hold_id == handle.parts[0].hold_id and pid == 0 and lifetime >= 24 * 3600 * 1_000_000
    # What the hold is: every row's input and its 50-token cap at the batch price (input counted with a 10 % margin).
    prices = load_litellm().model_cost["gpt-4o-mini"]
    assert amount >= 30 * 50 * prices["output_cost_per_token_batches"]
    # Another session on the same ledger, whose daily budget leaves less than the hold: refused by it.
    other = ipyllm.Session(config=ipyllm.LLMConfig(), usage_db=ipyllm.config.usage_db or str(_api.session.store().path))  # type: ignore[union-attr]
    other.config.update(base_url=batched.base_url, api_key="sk-other-0000000000", daily_budget_usd=amount * 0.9, max_tokens=50)
    with pytest.raises(ipyllm.BudgetExceededError, match="held by 1 call"):
        other.complete("hello")
    batched.release_batches()
    handle.wait(progress=False)
    with ledger() as connection:
        assert connection.execute("SELECT COUNT(*) FROM holds").fetchone()[0] == 0  # settled when the results came
    assert other.complete("hello").usage.status == "ok"


# -- failures ----------------------------------------------------------------------------------------------------------
def test_failed_lines_are_their_rows_errors_each_row_once(batched: StubServer) -> None:
    batched.script_batches(BatchScript(fail_lines=(2, 5)))
    frame = reviews(10)
    result = ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert result.isna().sum() == 2
    batch = ipyllm.last_batch()
    assert batch is not None
    errors = batch.errors.dropna()
    assert len(errors) == 2 and all(e.startswith("BatchLineError: 400: Invalid request (stub)") for e in errors)
    rows = batch_rows()
    assert sorted(row[0] for row in rows) == ["error"] * 2 + ["ok"] * 8
    # Running it again sends only the two.
    ipyllm.map(TEMPLATE, frame, via="batch", progress=False)
    assert len(request_lines(batched)) == 12


@pytest.mark.parametrize("end", ["cancelled", "expired"])
def test_a_cancelled_or_expired_batch_keeps_the_rows_that_finished(batched: StubServer, end: str) -> None:
    if end == "cancelled":
        batched.script_batches(BatchScript(hold=True, progress=4))
        handle = ipyllm.map(TEMPLATE, reviews(10), via="batch", wait=False)
        handle.refresh()  # in_progress, four lines done
        handle.cancel()
        result = handle.result(progress=False)
    else:
        batched.script_batches(BatchScript(end="expired", progress=4))
        result = ipyllm.map(TEMPLATE, reviews(10), via="batch", progress=False)
    assert result.notna().sum() == 4
    batch = ipyllm.last_batch()
    assert batch is not None
    word = "BatchCancelled" if end == "cancelled" else "BatchExpired"
    errors = batch.errors.dropna()
    assert len(errors) == 6 and all(e.startswith(word) and e.endswith("run the same map again to send it") for e in errors)
    rows = batch_rows()
    assert sorted(row[0] for row in rows) == ["error"] * 6 + ["ok"] * 4
    assert list(ipyllm.batches()["status"]) == ["collected"]


# -- the magic ---------------------------------------------------------------------------------------------------------
def test_the_map_magic_via_batch(batched: StubServer, ip: Any) -> None:
    ip.user_ns["notes"] = ["good", "bad", "fine"]
    ip.run_cell_magic("llm", "--map notes --via batch -o labels", "Label: {value}")
    assert ip.user_ns["labels"].tolist() == [f"[gpt-4o-mini] Label: {v}" for v in ("good", "bad", "fine")]
    assert len(creates(batched)) == 1 and set(ipyllm.usage()["tier"]) == {"batch"}
    with pytest.raises(UsageError, match="--via goes with --map"):
        ip.run_cell_magic("llm", "--via batch", "Label: this")
