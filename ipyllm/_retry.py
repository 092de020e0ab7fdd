"""The retry policy: what is retried, how long to wait, and the note shown while waiting.

Small tenacity callables, so the policy is testable without a network: ``retrying(..., sleep=...)``
takes an injected sleep.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from ipyllm._errors import StreamBrokenError

__all__ = ["RETRY_STATUS", "RetryNote", "describe", "retry_after_seconds", "retrying", "should_retry", "wait_retry_after"]

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


def should_retry(exc: BaseException) -> bool:
    """True for rate limits, connection errors, timeouts and 500/502/503/504; False for anything else."""
    if not isinstance(exc, Exception) or isinstance(exc, StreamBrokenError) or is_missing_key(exc):
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
    """Honour the provider's Retry-After (capped at ``max_wait``); otherwise use ``fallback``."""

    def __init__(self, fallback: Callable[[RetryCallState], float], max_wait: float) -> None:
        self.fallback = fallback
        self.max_wait = max_wait

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        hinted = retry_after_seconds(outcome.exception() if outcome is not None else None)
        if hinted is not None:
            return min(hinted, self.max_wait)
        return self.fallback(retry_state)


def backoff(min_wait: float, max_wait: float) -> wait_retry_after:
    """Exponential backoff with full jitter between ``min_wait`` and ``max_wait``, Retry-After first.

    Attempt n waits a uniform draw from [min_wait, min(max_wait, min_wait * 2**(n-1))].
    """
    jitter = wait_random_exponential(multiplier=min_wait or 1.0, min=min_wait, max=max_wait)
    return wait_retry_after(jitter, max_wait)


def describe(exc: BaseException) -> str:
    """A few words on why an attempt failed: ``rate limited (429)``, ``connection error``, ..."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    text = str(exc)
    if status == 429:
        return "rate limited (429)"
    if "Connection error" in text or "APIConnectionError" in text or name in ("APIConnectionError", "ConnectionError"):
        return "connection error"
    if status == 504:
        return "gateway timeout (504)"
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
