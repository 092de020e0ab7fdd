"""The retry policy: what is retried, how long to wait, and the note shown while waiting.

Small tenacity callables, so the policy is testable without a network: ``retrying(..., sleep=...)``
takes an injected sleep. ``retried`` / ``aretried`` run an attempt under the policy a call's settings give, the first
attempt before tenacity is set up.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ipyllm._config import Settings
from ipyllm.errors import StreamBrokenError

__all__ = [
    "RETRY_STATUS",
    "RetryNote",
    "aretried",
    "async_retrying",
    "backoff",
    "describe",
    "is_permanent",
    "retried",
    "retry_after_seconds",
    "retrying",
    "should_retry",
    "wait_retry_after",
]

#: HTTP statuses worth another attempt (408 and 504 are litellm's ``Timeout``).
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_NEVER_RETRIED = (
    "ContextWindowExceededError",
    "ContentPolicyViolationError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
)
_MISSING_KEY_TEXT = ("Missing credentials", "api_key client option must be set")


def is_missing_key(exc: BaseException) -> bool:
    """litellm reports a missing key as a 500 ``InternalServerError``; it must not be retried."""
    text = str(exc)
    return any(marker in text for marker in _MISSING_KEY_TEXT)


#: A server error no retry can fix: the body's error type, or its words, say the server cannot do this at all.
_PERMANENT_TYPES = frozenset({"not_supported_error", "invalid_request_error", "not_implemented_error"})
_PERMANENT_WORDS = re.compile(r"must be created with|not supported|does not support|unsupported|not implemented", re.IGNORECASE)


def is_permanent(exc: BaseException) -> bool:
    """A 5xx that says it will never succeed: 501/505, an error type like ``not_supported_error``, or words
    like "must be created with" / "not supported" (llama.cpp: "Llama model must be created with embedding=True")."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or status < 500:
        return False
    if status in (501, 505):
        return True
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and str(body.get("type") or "") in _PERMANENT_TYPES:
        return True
    return _PERMANENT_WORDS.search(str(getattr(exc, "message", None) or exc)) is not None


def should_retry(exc: BaseException) -> bool:
    """True for rate limits, connection errors, timeouts and 500/502/503/504; False for anything else."""
    if not isinstance(exc, Exception) or isinstance(exc, StreamBrokenError) or is_missing_key(exc) or is_permanent(exc):
        return False
    if any(cls.__name__ in _NEVER_RETRIED for cls in type(exc).__mro__):
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in RETRY_STATUS
    # Transport failures that carry no status (raised below litellm, or by a user's completion function).
    return any(cls.__name__ in ("APIConnectionError", "APITimeoutError", "TransportError") for cls in type(exc).__mro__) or isinstance(
        exc, (ConnectionError, TimeoutError)
    )


def _headers(exc: BaseException) -> Mapping[str, str]:
    for source in (getattr(getattr(exc, "response", None), "headers", None), getattr(exc, "litellm_response_headers", None)):
        if source:
            try:
                return {str(k).lower(): str(v) for k, v in dict(source).items()}
            except (TypeError, ValueError):
                continue
    return {}


def retry_after_seconds(exc: BaseException | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the provider asked us to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date)."""
    if exc is None:
        return None
    headers = _headers(exc)
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class wait_retry_after:  # noqa: N801 - named like tenacity's strategies
    """Full jitter between a floor and a growing cap; a provider's Retry-After raises the wait, never lowers it.

    Retry n (n = 1, 2, ...) waits ``uniform(min_wait, cap)`` with ``cap = min(max_wait, min_wait * 2**n)``,
    so even the first retry is jittered and concurrent callers spread out. A ``Retry-After`` of r seconds
    makes the wait ``max(r, that draw)``; no wait passes ``max_wait``.
    """

    def __init__(self, min_wait: float, max_wait: float, draw: Callable[[float, float], float] = random.uniform) -> None:
        self.min_wait = min_wait
        self.max_wait = max_wait
        self.draw = draw

    def cap(self, retry_number: int) -> float:
        # min_wait 0 still backs off: 1 s, 2 s, 4 s, ... up to max_wait.
        return min(self.max_wait, max(self.min_wait, (self.min_wait or 0.5) * 2**retry_number))

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.draw(self.min_wait, self.cap(retry_state.attempt_number))
        outcome = retry_state.outcome
        hinted = retry_after_seconds(outcome.exception() if outcome is not None else None)
        if hinted is not None:
            wait = max(wait, hinted)
        return min(self.max_wait, max(self.min_wait, wait))


def backoff(min_wait: float, max_wait: float) -> wait_retry_after:
    """The wait before each retry: see ``wait_retry_after``."""
    return wait_retry_after(min_wait, max_wait)


def describe(exc: BaseException) -> str:
    """A few words on why an attempt failed: ``rate limited (429)``, ``connection error``, ..."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    text = str(exc)
    if status == 429:
        return "rate limited (429)"
    if "repeating the same chunk" in text:
        return "litellm's repeated-chunk guard"
    if "Stream ended before" in text or getattr(exc, "is_pre_first_chunk", False) or name == "MidStreamFallbackError":
        return "the stream broke before any text"
    if "Connection error" in text or "APIConnectionError" in text or name in ("APIConnectionError", "ConnectionError"):
        return "connection error"
    if status == 504:
        return "gateway timeout (504)"
    if status == 408 and _headers(exc):
        return "request timeout (408) from the server"
    if status == 408 or "Timeout" in name:
        return "timed out"
    if isinstance(status, int):
        return f"server error ({status})"
    return name


@dataclass(frozen=True)
class RetryNote:
    """What the user is told while a retry waits."""

    reason: str
    next_attempt: int
    attempts: int
    wait: float

    def __str__(self) -> str:
        return f"{self.reason}, attempt {self.next_attempt}/{self.attempts} in {self.wait:.1f} s"


def retrying(
    num_retries: int,
    min_wait: float,
    max_wait: float,
    *,
    sleep: Callable[[float], Any] = time.sleep,
    on_retry: Callable[[RetryNote], Any] | None = None,
) -> Retrying:
    """The tenacity policy of one logical call: ``num_retries`` retries after the first attempt."""
    attempts = num_retries + 1

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            on_retry(RetryNote(describe(exc) if exc else "retry", state.attempt_number + 1, attempts, state.next_action.sleep))

    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=backoff(min_wait, max_wait),
        retry=retry_if_exception(should_retry),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def async_retrying(
    num_retries: int,
    min_wait: float,
    max_wait: float,
    *,
    sleep: Callable[[float], Awaitable[Any]],
    on_retry: Callable[[RetryNote], Any] | None = None,
) -> AsyncRetrying:
    """``retrying`` for coroutines: the same stop, waits, retry test and notes, its waits spent with ``sleep``."""
    policy = retrying(num_retries, min_wait, max_wait, on_retry=on_retry)
    return AsyncRetrying(
        sleep=sleep,
        stop=policy.stop,
        wait=policy.wait,
        retry=policy.retry,
        before_sleep=policy.before_sleep,
        reraise=policy.reraise,
    )


T = TypeVar("T")


def retried(
    attempt: Callable[[], T],
    settings: Settings,
    *,
    sleep: Callable[[float], Any] = time.sleep,
    on_retry: Callable[[RetryNote], Any] | None = None,
) -> T:
    """``attempt()`` under the policy of ``settings`` (``retrying``: its ``num_retries``, ``retry_min_wait`` and
    ``retry_max_wait``), its first attempt made before the policy is built.

    Nearly every call succeeds the first time, and tenacity's setup and bookkeeping cost such a call about 0.1 ms
    of a kernel's time (its caches cold after litellm's work), a fiftieth of the call. A first attempt that fails
    in a way worth retrying is handed to the policy as its first attempt, raised again without being sent, so that
    the waits, the notes and the count of attempts are tenacity's, as if it had made that attempt itself.
    """
    try:
        return attempt()
    except BaseException as exc:
        if settings.num_retries < 1 or not should_retry(exc):
            raise
        first = [exc]
    policy = retrying(settings.num_retries, settings.retry_min_wait, settings.retry_max_wait, sleep=sleep, on_retry=on_retry)
    return policy(_after(first, attempt))


async def aretried(
    attempt: Callable[[], Awaitable[T]],
    settings: Settings,
    *,
    sleep: Callable[[float], Awaitable[Any]],
    on_retry: Callable[[RetryNote], Any] | None = None,
) -> T:
    """``retried`` for coroutines, under ``async_retrying``'s policy, its waits spent with ``sleep``."""
    try:
        return await attempt()
    except BaseException as exc:
        if settings.num_retries < 1 or not should_retry(exc):
            raise
        first = [exc]
    policy = async_retrying(settings.num_retries, settings.retry_min_wait, settings.retry_max_wait, sleep=sleep, on_retry=on_retry)
    return await policy(_aafter(first, attempt))  # type: ignore[no-any-return]


def _after(first: list[BaseException], attempt: Callable[[], T]) -> Callable[[], T]:
    """``attempt``, whose first run raises ``first``'s failure again (taken out, so that nothing keeps it)."""

    def run() -> T:
        if first:
            raise first.pop()
        return attempt()

    return run


def _aafter(first: list[BaseException], attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """``_after`` for a coroutine function."""

    async def run() -> T:
        if first:
            raise first.pop()
        return await attempt()

    return run
