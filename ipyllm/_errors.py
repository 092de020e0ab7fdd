"""ipyllm's exceptions. Each prints as one line in IPython (``_render_traceback_``), yet stays catchable by type.

::

    Exception
     ├── SettingError (traitlets.TraitError, ValueError)   a setting was refused; the old value stays
     └── LLMError                                           a model call failed; ``.usage`` is its row
          ├── MissingKeyError                               no API key for the provider
          ├── AuthenticationError                           the provider refused the key (401, 403)
          ├── UnknownModelError                             neither litellm nor the provider knows the model
          ├── RateLimitError                                still rate limited (429) after every retry
          ├── ProviderUnavailableError                      connection errors, timeouts, 5xx after every retry
          ├── RequestRejectedError                          400/422, context window, content policy
          ├── StreamBrokenError                             the stream broke after text arrived; ``.partial``
          └── BudgetExceededError                           not sent: the call could pass a spending limit

``KeyboardInterrupt`` is never wrapped: an interrupted call records an ``interrupted`` row and re-raises it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipyllm._config import SettingError

if TYPE_CHECKING:
    from ipyllm._ledger import UsageRow

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "LLMError",
    "MissingKeyError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RequestRejectedError",
    "SettingError",
    "StreamBrokenError",
    "UnknownModelError",
]


class LLMError(Exception):
    """A model call failed after its retries. ``str()`` says what happened and what to do next."""

    status_code: int | None = None

    def __init__(self, message: str, *, status_code: int | None = None, usage: UsageRow | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.usage = usage

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self.message}"]


class MissingKeyError(LLMError):
    """No API key was found for the model's provider."""


class AuthenticationError(LLMError):
    """The provider refused the API key."""


class UnknownModelError(LLMError):
    """The model name is not known to litellm or to the provider."""


class RateLimitError(LLMError):
    """The provider still answered 429 after every retry."""


class ProviderUnavailableError(LLMError):
    """The provider could not be reached, timed out or failed (5xx) on every attempt."""


class RequestRejectedError(LLMError):
    """The provider refused the request itself (bad request, context window, content policy); not retried."""


class StreamBrokenError(LLMError):
    """A streamed reply broke after text had arrived; ``partial`` holds what came."""

    def __init__(self, message: str, *, partial: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.partial = partial


class BudgetExceededError(LLMError):
    """The call was not sent: with its estimated cost, spending would pass ``budget_usd`` or ``daily_budget_usd``."""
