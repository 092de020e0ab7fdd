"""ipyllm.map / amap / acomplete over real HTTP to the stub server: alignment, rate limits, budgets,
failures, interrupt and resume, dry runs, and memory bounded by the concurrency."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time

import pandas as pd
import pytest

import ipyllm
from ipyllm import _api
from ipyllm._engine import Client
from ipyllm._litellm import load_litellm
from ipyllm.testing import Fault, StubServer

from ..helpers import chat_requests

PRICES = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}


def test_replies_are_aligned_to_a_shuffled_non_integer_index(fast: StubServer) -> None:
    labels = [f"row-{i}" for i in range(30)]
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(30)], "n": range(30)}, index=labels).sample(frac=1, random_state=7)
    result = ipyllm.map("About {text} ({index}, n={n:03d})", frame, concurrency=6, progress=False)
    assert isinstance(result, pd.Series) and result.dtype == "string"
    assert result.index.equals(frame.index)  # same labels, same (shuffled) order
    for label, row in frame.iterrows():
        assert result[label] == f"[gpt-4o-mini] About {row['text']} ({label}, n={row['n']:03d})"
    batch = ipyllm.last_batch()
    assert batch is not None and result.attrs["batch"] == batch.id
    rows = ipyllm.usage()
    mine = rows[rows["batch"] == batch.id]
    assert len(mine) == 30 and set(mine["source"]) == {"map"} and set(mine["status"]) == {"ok"}
    assert rows.groupby("batch")["cost_usd"].sum()[batch.id] == pytest.approx(mine["cost_usd"].sum())


def test_series_lists_dicts_and_callables(fast: StubServer) -> None:
    series = pd.Series(["b", "a"], index=[10, 5], name="letter")
    assert ipyllm.map("{letter}/{value}/{index}", series, progress=False).tolist() == ["[gpt-4o-mini] b/b/10", "[gpt-4o-mini] a/a/5"]
    assert ipyllm.map("say {value}", ["x", "y"], progress=False).tolist() == ["[gpt-4o-mini] say x", "[gpt-4o-mini] say y"]
    assert ipyllm.map("{name}!", iter([{"name": "Ada"}]), progress=False).tolist() == ["[gpt-4o-mini] Ada!"]
    messages = ipyllm.map(lambda row: [{"role": "user", "content": row["name"].upper()}], [{"name": "ada"}], progress=False)
    assert messages.tolist() == ["[gpt-4o-mini] ADA"]


def test_a_template_that_does_not_fit_fails_before_sending(fast: StubServer) -> None:
    with pytest.raises(ipyllm.SettingError, match=r"\{txt\}.*its fields: n, text"):
        ipyllm.map("{txt}", pd.DataFrame({"text": ["a"], "n": [1]}), progress=False)
    assert chat_requests(fast) == []


@pytest.mark.parametrize("storm", [1, 8], ids=["one-429", "all-8-429"])
def test_a_429_storm_pauses_every_worker_until_retry_after(fast: StubServer, storm: int) -> None:
    fast.delay = 0.3  # answers take 0.3 s, a 429 comes at once: the other workers are free well before the pause ends
    fast.script(*[Fault.rate_limit(retry_after=1.0)] * storm)
    result = ipyllm.map("storm {value}", [str(i) for i in range(24)], concurrency=8, progress=False)
    assert result.notna().all()
    requests = sorted(chat_requests(fast), key=lambda r: r.time)
    first_wave, later = requests[:8], requests[8:]
    assert [r.fault for r in first_wave].count("status") == storm
    storm_began = min(r.time for r in first_wave if r.fault == "status")
    # No request reached the server before the pause was over: not the retries, nor the rows of the workers
    # whose answers came back meanwhile.
    assert min(r.time for r in later) >= storm_began + 1.0 - 0.02, [round(r.time - storm_began, 3) for r in later]
    # The pause lowered the requests in flight: fewer than 8 arrive before the first answers (0.3 s later).
    resumed = min(r.time for r in later)
    assert sum(1 for r in later if r.time < resumed + 0.25) < 8
    batch = ipyllm.last_batch()
    assert batch is not None and batch.tally.pauses == 1
    rows = ipyllm.usage()
    assert rows[rows["batch"] == batch.id]["attempts"].sum() == 24 + storm


def test_the_budget_is_never_passed_at_concurrency_32(fast: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    fast.delay = 0.1
    ipyllm.config.update(prices=PRICES, budget_usd=0.05)
    result = ipyllm.map(
        "Tell me a long story about {value}, please, with details", [f"topic {i}" for i in range(60)], concurrency=32, max_tokens=10
    )
    rows = ipyllm.usage()
    spent = rows["cost_usd"].sum()
    assert spent <= 0.05 + 1e-12
    assert 1 <= len(chat_requests(fast)) <= 5  # each call may cost $0.01, so at most five were ever in flight
    assert result.notna().sum() == len(chat_requests(fast)) and result.isna().sum() == 60 - len(chat_requests(fast))
    assert (rows["status"] == "over_budget").sum() == 1
    err = capsys.readouterr().err
    budget_lines = [line for line in err.splitlines() if line.startswith("ipyllm: ") and "not sent" in line]
    assert len(budget_lines) == 1 and f"{60 - len(chat_requests(fast))} of 60 rows not sent" in budget_lines[0]
    assert "the batch spent $0.0" in budget_lines[0] and "budget_usd" in budget_lines[0]
    # The text bar's summary stays as the last line.
    assert err.strip().splitlines()[-2].startswith("ipyllm.map batch ")


def test_failed_rows_are_na_with_one_line_and_errors_raise_keeps_the_answers(fast: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    fast.script(Fault.status(400, "bad row"), Fault.status(422, "also bad"))
    result = ipyllm.map("{value}", ["a", "b", "c", "d"], concurrency=1, progress=False)
    assert result.isna().tolist() == [True, True, False, False]
    errors = ipyllm.last_batch().errors  # type: ignore[union-attr]
    assert errors.iloc[0].startswith("RequestRejectedError") and errors.iloc[2:].isna().all()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        "ipyllm: 2 of 4 rows failed (2 RequestRejectedError): they are <NA>; ipyllm.last_batch().errors says why, "
        "and running the same map again sends only the rows without an answer"
    ]

    fast.script(Fault.status(400))
    with pytest.raises(ipyllm.BatchError) as raised:
        ipyllm.map("{value} again", ["a", "b", "c"], concurrency=1, errors="raise", progress=False)
    assert raised.value._render_traceback_() == [f"BatchError: {raised.value.message}"]
    assert "1 of 3 rows failed (1 RequestRejectedError)" in raised.value.message
    assert raised.value.result.tolist() == [pd.NA, "[gpt-4o-mini] b again", "[gpt-4o-mini] c again"]


def test_a_missing_key_stops_the_batch_at_the_first_row(fast: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    fast.script(Fault.status(401, "Incorrect API key"))
    result = ipyllm.map("{value}", list("abcdef"), concurrency=1, progress=False)
    assert result.isna().all() and len(chat_requests(fast)) == 1
    assert "5 of 6 rows not sent" in capsys.readouterr().err


def test_ctrl_c_cancels_calls_in_flight_and_the_rerun_sends_only_the_missing_rows(fast: StubServer) -> None:
    fast.delay = 0.25
    items = [f"item {i}" for i in range(40)]
    load_litellm()  # first in a process, the import would take the interrupt
    timer = threading.Timer(0.9, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ipyllm.BatchInterrupted) as raised:
            ipyllm.map("{value}", items, concurrency=4, progress=False)
    finally:
        timer.cancel()
    interrupted_at = started + 0.9
    assert time.monotonic() - interrupted_at < 1.0  # stopped within a second
    partial = raised.value.result
    assert partial is ipyllm.last_batch().result  # type: ignore[union-attr]
    answered = int(partial.notna().sum())
    assert 0 < answered < 40 and list(partial.index) == list(range(40))
    assert "interrupted after" in raised.value._render_traceback_()[0]
    rows = ipyllm.usage()
    first = rows[rows["batch"] == raised.value.batch.id]
    assert (first["status"] == "interrupted").sum() >= 1
    assert (first["status"] == "ok").sum() == answered
    time.sleep(0.3)  # the cancelled requests' answers are on their way; nothing more arrives after
    sent_before = len(chat_requests(fast))

    resumed = ipyllm.map("{value}", items, concurrency=4, progress=False)
    assert resumed.notna().all()
    assert len(chat_requests(fast)) - sent_before == 40 - answered
    rows = ipyllm.usage()
    second = rows[rows["batch"] == ipyllm.last_batch().id]  # type: ignore[union-attr]
    assert (second["status"] == "cached").sum() == answered and (second[second["status"] == "cached"]["cost_usd"] == 0).all()
    assert ((second["status"] == "ok").sum()) == 40 - answered


def test_resume_false_sends_every_row_again(fast: StubServer) -> None:
    ipyllm.map("{value}", ["a", "b"], progress=False)
    ipyllm.map("{value}", ["a", "b"], resume=False, progress=False)
    assert len(chat_requests(fast)) == 4


def test_dry_run_sends_nothing_and_gives_a_cost_range(fast: StubServer) -> None:
    ipyllm.config.prices = PRICES
    guess = ipyllm.map("Summarise {value}", ["one", "two", "three"], dry_run=True, max_tokens=10)
    assert isinstance(guess, ipyllm.BatchEstimate) and guess.rows == 3 and guess.prompt_tokens > 0
    assert guess.low_usd == 0.0 and guess.high_usd == pytest.approx(0.03)
    assert str(guess).startswith("dry run, nothing sent · 3 rows · gpt-4o-mini")
    assert chat_requests(fast) == []


def test_acomplete_and_amap_do_not_block_the_loop(fast: StubServer) -> None:
    fast.script(Fault.status(503))

    async def main() -> tuple[str, list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        clock = asyncio.ensure_future(ticker())
        reply = await ipyllm.acomplete("hello async")
        mapped = await ipyllm.amap("{value}", ["x", "y"], progress=False)
        clock.cancel()
        return reply, mapped.tolist(), ticks

    reply, mapped, ticks = asyncio.run(main())
    assert reply == "[gpt-4o-mini] hello async" and reply.usage.attempts == 2 and reply.usage.source == "api"
    assert mapped == ["[gpt-4o-mini] x", "[gpt-4o-mini] y"]
    assert ticks >= 3  # the loop kept running during the retry wait


def test_memory_is_bounded_by_the_concurrency(session: _api.Session, clean_config: ipyllm.LLMConfig) -> None:
    litellm = load_litellm()
    answer = litellm.ModelResponse(
        choices=[{"message": {"role": "assistant", "content": "ok"}}], usage={"prompt_tokens": 3, "completion_tokens": 1}
    )
    most_tasks = 0

    async def acompletion(**kwargs: object) -> object:
        nonlocal most_tasks
        most_tasks = max(most_tasks, len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        return answer

    session.client = Client(acompletion=acompletion)
    clean_config.update(usage_db=":memory:", api_key="sk-x")
    result = ipyllm.map("{value}", (str(i) for i in range(3000)), concurrency=16, progress=False)
    assert result.notna().all() and len(result) == 3000
    assert most_tasks <= 16 + 8  # the workers, the batch and litellm's own helpers: never one per row


def test_cancelling_amap_cancels_the_calls_in_flight(fast: StubServer) -> None:
    fast.delay = 0.3

    async def main() -> None:
        work = asyncio.ensure_future(ipyllm.amap("{value}", [str(i) for i in range(30)], concurrency=3, progress=False))
        await asyncio.sleep(0.8)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work

    asyncio.run(main())
    batch = ipyllm.last_batch()
    assert batch is not None and 0 < batch.result.notna().sum() < 30
    rows = ipyllm.usage()
    assert 1 <= (rows[rows["batch"] == batch.id]["status"] == "interrupted").sum() <= 3
    sent = len(chat_requests(fast))
    time.sleep(0.5)
    assert len(chat_requests(fast)) == sent
