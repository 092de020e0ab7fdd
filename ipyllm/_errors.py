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
    KeyboardInterrupt
     └── Interrupted                                        Ctrl-C during a call; ``.usage`` is its ``interrupted`` row

An interrupted call records an ``interrupted`` row (what was sent and received so far, counted locally) and
raises ``Interrupted``: still a ``KeyboardInterrupt`` to ``except`` clauses, shown as one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipyllm._config import SettingError

if TYPE_CHECKING:
    from ipyllm._ledger import UsageRow

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "Interrupted",
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


class Interrupted(KeyboardInterrupt):
    """The user interrupted a call (Ctrl-C, the kernel's interrupt button); ``.usage`` is its ``interrupted`` row.

    ``partial`` holds the text that had arrived. Shown as one line, ``KeyboardInterrupt: interrupted after
    1.2 s; the partial reply is kept above``; raised with nothing chained to it.
    """

    def __init__(self, message: str, *, partial: str = "", usage: UsageRow | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.partial = partial
        self.usage = usage

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self.message}"]
