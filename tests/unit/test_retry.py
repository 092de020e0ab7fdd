"""The retry policy: predicate, waits, Retry-After, attempt counts.

Mostly in isolation (litellm's own exception classes, an injected completion function, recorded sleeps);
the waits and Retry-After also over real HTTP to the stub server.
"""

from __future__ import annotations

import asyncio
import email.utils
import statistics
from typing import Any

import httpx
import litellm
import pytest

import ipyllm
from ipyllm import _retry
from ipyllm._config import LLMConfig
from ipyllm._engine import Client
from ipyllm._usage import UsageRow
from ipyllm.errors import ProviderUnavailableError, RateLimitError, RequestRejectedError, StreamBrokenError
from ipyllm.testing import Fault, StubServer

from ..conftest import SleepRecorder
from ..helpers import ROOT


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))


def make(name: str, status: int | None = None, headers: dict[str, str] | None = None) -> Exception:
    """Build each exception class litellm raises, as litellm itself builds it."""
    common: dict[str, Any] = {"message": f"{name} (test)", "llm_provider": "openai", "model": "gpt-4o-mini"}
    cls = getattr(litellm, name)
    if name == "APIError":
        return cls(status_code=status or 500, response=response(status or 500), **common)
    if name == "APIConnectionError":
        return cls(request=httpx.Request("POST", "http://127.0.0.1"), **common)
    if name == "Timeout":
        return cls(exception_status_code=status, **common)
    return cls(response=response(status or 400, headers), **common)


RETRIED = [
    ("RateLimitError", None),
    ("APIConnectionError", None),
    ("Timeout", None),
    ("Timeout", 504),
    ("InternalServerError", None),
    ("ServiceUnavailableError", None),
    ("BadGatewayError", None),
    ("APIError", 500),
    ("APIError", 502),
]
NOT_RETRIED = [
    ("BadRequestError", None),
    ("AuthenticationError", None),
    ("PermissionDeniedError", None),
    ("NotFoundError", None),
    ("ContextWindowExceededError", None),
    ("ContentPolicyViolationError", None),
    ("UnprocessableEntityError", None),
    ("APIError", 403),
    ("APIError", 400),
]


@pytest.mark.parametrize(("name", "status"), RETRIED)
def test_transient_failures_are_retried(name: str, status: int | None) -> None:
    assert _retry.should_retry(make(name, status)) is True


@pytest.mark.parametrize(("name", "status"), NOT_RETRIED)
def test_request_failures_are_not_retried(name: str, status: int | None) -> None:
    assert _retry.should_retry(make(name, status)) is False


def test_a_missing_key_is_not_retried_although_litellm_calls_it_a_500() -> None:
    exc = litellm.InternalServerError(
        message="OpenAIException - Missing credentials. Please pass an `api_key`", llm_provider="openai", model="m"
    )
    assert exc.status_code == 500
    assert _retry.should_retry(exc) is False


def test_plain_transport_errors_and_interrupts() -> None:
    assert _retry.should_retry(ConnectionResetError()) is True
    assert _retry.should_retry(TimeoutError()) is True
    assert _retry.should_retry(ValueError("bug")) is False
    assert _retry.should_retry(KeyboardInterrupt()) is False
    assert _retry.should_retry(StreamBrokenError("broke", partial="x")) is False


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({}, None),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_is_read_from_the_response_headers(headers: dict[str, str], expected: float | None) -> None:
    assert _retry.retry_after_seconds(make("RateLimitError", 429, headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    exc = make("RateLimitError", 429, {"retry-after": email.utils.formatdate(now + 30, usegmt=True)})
    assert _retry.retry_after_seconds(exc, now=lambda: now) == pytest.approx(30, abs=1)


# -- the whole loop, with an injected completion function and sleep -----------------------------------


class Scripted:
    """A completion function that fails as scripted, then answers."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        assert kwargs["max_retries"] == 0 and "num_retries" not in kwargs
        if self.failures:
            raise self.failures.pop(0)
        return litellm.ModelResponse(
            model=kwargs["model"],
            choices=[{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
            usage={"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        )


def run(completion: Scripted, sleeps: SleepRecorder, **settings: Any) -> tuple[Any, list[UsageRow], list[str]]:
    rows: list[UsageRow] = []
    notes: list[str] = []
    cfg = LLMConfig()
    cfg.update(**settings)
    client = Client(completion=completion, sleep=sleeps)
    try:
        reply: Any = client.chat(
            cfg.snapshot(), [{"role": "user", "content": "hi"}], report=rows.append, on_retry=lambda n: notes.append(str(n))
        )
    except Exception as exc:
        reply = exc
    return reply, rows, notes


def upper_bound(attempt: int, min_wait: float, max_wait: float) -> float:
    """The most that the wait after failed attempt n may be: min(max_wait, min_wait * 2**n) (the formula in docs/errors.md)."""
    return min(max_wait, min_wait * 2**attempt)


def test_waits_grow_exponentially_with_jitter_between_the_bounds(sleeps: SleepRecorder) -> None:
    runs, retries = 200, 5
    for _ in range(runs):
        failures = [make("ServiceUnavailableError", 503) for _ in range(retries)]
        reply, rows, notes = run(Scripted(*failures), sleeps, num_retries=retries, retry_min_wait=3, retry_max_wait=60)
        assert str(reply) == "fine" and rows[0].attempts == retries + 1 and rows[0].status == "ok"
    assert notes[0].startswith("server error (503), attempt 2/6 in ")
    assert len(sleeps.waits) == runs * retries
    by_attempt = {n: sleeps.waits[n - 1 :: retries] for n in range(1, retries + 1)}
    for attempt in range(1, retries + 1):
        waits, high = by_attempt[attempt], upper_bound(attempt, 3, 60)
        assert 3 <= min(waits) and max(waits) <= high, (attempt, min(waits), max(waits))
        # Full jitter, the first retry included: the draws fill the range (each tenth of it is missed by all
        # 200 with p = 0.9**200).
        assert max(waits) > high - (high - 3) / 10 and min(waits) < 3 + (high - 3) / 10, (attempt, min(waits), max(waits))
        if attempt > 1:
            # Exponential: this attempt's upper bound is twice the previous one, and the draws reach past it.
            assert max(waits) > upper_bound(attempt - 1, 3, 60)
    assert statistics.mean(by_attempt[4]) > 1.5 * statistics.mean(by_attempt[2]) > 1.5 * statistics.mean(by_attempt[1])


def test_backoff_over_http_to_the_stub(live: StubServer, sleeps: SleepRecorder) -> None:
    """The real path: litellm raises from real 503 answers, the waits are recorded instead of slept."""
    runs, retries = 6, 5
    ipyllm.config.update(num_retries=retries, retry_min_wait=3, retry_max_wait=60)
    for _ in range(runs):
        live.script(*[Fault.status(503)] * retries)
        assert ipyllm.complete("hello").usage.attempts == retries + 1
    assert len(live.requests) == runs * (retries + 1) and len(sleeps.waits) == runs * retries
    by_attempt = {n: sleeps.waits[n - 1 :: retries] for n in range(1, retries + 1)}
    for attempt in range(1, retries + 1):
        assert all(3 <= wait <= upper_bound(attempt, 3, 60) for wait in by_attempt[attempt]), by_attempt[attempt]
        assert len(set(by_attempt[attempt])) > 1, f"jitter: the wait after attempt {attempt} varies from run to run"
    # Growth: a wait after the 4th or 5th attempt passes the 2nd attempt's bound (missed by all 12 draws: p < 1e-5).
    assert max(by_attempt[4] + by_attempt[5]) > upper_bound(2, 3, 60)


def test_retry_after_over_http_is_honoured_and_capped(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=3, retry_min_wait=1, retry_max_wait=20)
    live.script(Fault.rate_limit(retry_after=7), Fault.rate_limit(retry_after=600), Fault.rate_limit(retry_after=0.5))
    notes: list[str] = []
    reply = ipyllm.complete("hello", on_retry=lambda note: notes.append(str(note)))
    assert reply.usage.attempts == 4 and len(live.requests) == 4
    assert [r.fault for r in live.requests] == ["status"] * 3 + [""]
    # The server's Retry-After raises the wait (7 s over a draw from [1, 2]), is capped at retry_max_wait
    # (600 -> 20), and never lowers it below the jittered backoff (0.5 -> a draw from [1, 8]).
    assert sleeps.waits[:2] == [7.0, 20.0] and 1 <= sleeps.waits[2] <= 8, sleeps.waits
    assert notes == [
        "rate limited (429), attempt 2/4 in 7.0 s",
        "rate limited (429), attempt 3/4 in 20.0 s",
        f"rate limited (429), attempt 4/4 in {sleeps.waits[2]:.1f} s",
    ]


def test_jitter_differs_between_runs(sleeps: SleepRecorder) -> None:
    for _ in range(5):
        run(Scripted(make("RateLimitError", 429), make("RateLimitError", 429)), sleeps, num_retries=2, retry_min_wait=1, retry_max_wait=60)
    second_waits = sleeps.waits[1::2]
    assert len(set(second_waits)) > 1, "jitter: the second wait should vary from run to run"


def test_waits_never_pass_the_maximum(sleeps: SleepRecorder) -> None:
    failures = [make("ServiceUnavailableError", 503) for _ in range(8)]
    run(Scripted(*failures), sleeps, num_retries=8, retry_min_wait=1, retry_max_wait=5)
    assert max(sleeps.waits) <= 5 and min(sleeps.waits) >= 1


def test_retry_after_is_honoured_and_capped(sleeps: SleepRecorder) -> None:
    failures = [make("RateLimitError", 429, {"retry-after": "7"}), make("RateLimitError", 429, {"retry-after": "600"})]
    _reply, _rows, notes = run(Scripted(*failures), sleeps, num_retries=3, retry_min_wait=1, retry_max_wait=20)
    assert sleeps.waits == [7.0, 20.0]
    assert notes == ["rate limited (429), attempt 2/4 in 7.0 s", "rate limited (429), attempt 3/4 in 20.0 s"]


def test_attempts_stop_after_num_retries(sleeps: SleepRecorder) -> None:
    completion = Scripted(*[make("RateLimitError", 429) for _ in range(10)])
    error, rows, _ = run(completion, sleeps, num_retries=2, retry_min_wait=0, retry_max_wait=0)
    assert isinstance(error, RateLimitError)
    assert completion.calls == 3 and len(sleeps.waits) == 2
    assert len(rows) == 1 and rows[0].attempts == 3 and rows[0].status == "error"
    assert rows[0].error == f"RateLimitError: {error.message}"
    assert "after 3 attempts" in error.message


def test_zero_retries_means_one_attempt(sleeps: SleepRecorder) -> None:
    completion = Scripted(make("APIConnectionError"))
    error, rows, _ = run(completion, sleeps, num_retries=0)
    assert isinstance(error, ProviderUnavailableError)
    assert completion.calls == 1 and sleeps.waits == [] and rows[0].attempts == 1


def test_a_bad_request_fails_at_once(sleeps: SleepRecorder) -> None:
    completion = Scripted(make("BadRequestError", 400))
    error, _rows, _ = run(completion, sleeps)
    assert isinstance(error, RequestRejectedError)
    assert completion.calls == 1 and sleeps.waits == []


def test_an_interrupt_during_a_wait_stops_at_once_and_records_the_row() -> None:
    def interrupted_sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    rows: list[UsageRow] = []
    completion = Scripted(make("RateLimitError", 429), make("RateLimitError", 429))
    client = Client(completion=completion, sleep=interrupted_sleep)
    with pytest.raises(KeyboardInterrupt):
        client.chat(LLMConfig().snapshot(), [{"role": "user", "content": "hi"}], report=rows.append)
    assert completion.calls == 1
    assert [(r.status, r.attempts) for r in rows] == [("interrupted", 1)]


# -- the first attempt, made before the policy is built ------------------------------------------------------


@pytest.fixture
def policies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the retry policies built from now on (each still built as usual)."""
    built: list[str] = []

    def counted(name: str) -> Any:
        real = getattr(_retry, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            built.append(name)
            return real(*args, **kwargs)

        return counting

    for name in ("retrying", "async_retrying"):
        monkeypatch.setattr(_retry, name, counted(name))
    return built


def test_a_call_answered_at_once_builds_no_retry_policy(live: StubServer, sleeps: SleepRecorder, policies: list[str]) -> None:
    """tenacity is set up only once a first attempt failed in a way worth retrying: a call answered at once, or
    refused for good, pays nothing for the loop (bench.py call: about 0.1 ms of the kernel's time a call)."""
    ipyllm.config.update(num_retries=3, retry_min_wait=1, retry_max_wait=2)
    assert ipyllm.complete("hello").usage.attempts == 1
    assert asyncio.run(ipyllm.acomplete("hello")).usage.attempts == 1
    assert ipyllm.map("{value}", ["a", "b"], progress=False).notna().all()
    live.script(Fault.status(400, "bad request"))
    with pytest.raises(RequestRejectedError):
        ipyllm.complete("refused")
    assert policies == [] and sleeps.waits == [] and len(live.requests) == 5
    live.script(Fault.status(503))
    assert ipyllm.complete("hello again").usage.attempts == 2
    assert policies == ["retrying"] and len(sleeps.waits) == 1 and len(live.requests) == 7


def test_an_async_call_retried_sends_one_request_per_attempt(live: StubServer, policies: list[str]) -> None:
    """The first failure is the policy's first attempt, not sent again: one request per attempt, one wait and one
    note between each two, the count of attempts in the row (as for a synchronous call)."""
    ipyllm.config.update(num_retries=3, retry_min_wait=0.01, retry_max_wait=0.02)
    live.script(Fault.status(503), Fault.status(503))
    notes: list[str] = []
    reply = asyncio.run(ipyllm.acomplete("hello", on_retry=lambda note: notes.append(str(note))))
    assert str(reply) and reply.usage.attempts == 3 and len(live.requests) == 3
    assert [note.split(" in ")[0] for note in notes] == ["server error (503), attempt 2/4", "server error (503), attempt 3/4"]
    assert "async_retrying" in policies


# -- retry timing, over HTTP ------------------------------------------------------------------------------------


def test_retry_after_never_lowers_the_wait_below_the_floor(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=3, retry_min_wait=0.3, retry_max_wait=5)
    live.script(*[Fault.rate_limit(retry_after=0)] * 3)
    ipyllm.complete("hello")
    assert len(sleeps.waits) == 3 and all(wait >= 0.3 for wait in sleeps.waits), sleeps.waits
    assert len(live.requests) == 4


def test_retry_after_raises_the_wait_and_is_capped(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=2, retry_min_wait=0.1, retry_max_wait=4)
    live.script(Fault.rate_limit(retry_after=3), Fault.rate_limit(retry_after=100))
    ipyllm.complete("hello")
    assert sleeps.waits[0] >= 3 and sleeps.waits[1] == 4


def test_waits_grow_between_the_floor_and_a_doubling_cap(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=5, retry_min_wait=1, retry_max_wait=10)
    live.script(*[Fault.status(503)] * 5)
    ipyllm.complete("hello")
    assert len(sleeps.waits) == 5
    for retry, wait in enumerate(sleeps.waits, start=1):
        assert 1 <= wait <= min(10, 2**retry), (retry, wait)


def test_the_first_retry_is_jittered(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=1, retry_min_wait=1, retry_max_wait=60)
    for _ in range(4):
        live.script(Fault.status(503))
        ipyllm.complete("hello")
    assert len(sleeps.waits) == 4 and all(1 <= wait <= 2 for wait in sleeps.waits)
    assert len(set(sleeps.waits)) == 4, "concurrent callers do not retry in lockstep"


def test_the_wait_policy_in_isolation() -> None:
    lowest = _retry.wait_retry_after(2, 30, draw=lambda low, high: low)
    highest = _retry.wait_retry_after(2, 30, draw=lambda low, high: high)
    assert [highest.cap(n) for n in range(1, 6)] == [4, 8, 16, 30, 30]
    assert lowest.cap(1) == 4 and lowest.min_wait == 2
    zero = _retry.wait_retry_after(0, 10)
    assert [zero.cap(n) for n in range(1, 5)] == [1, 2, 4, 8], "a zero floor still backs off"


def test_the_docs_state_the_formula_the_code_uses() -> None:
    page = (ROOT / "docs" / "errors.md").read_text()
    assert "uniform over [retry_min_wait, min(retry_max_wait, retry_min_wait * 2**n)]" in page
    assert "max(r, that draw)" in page
