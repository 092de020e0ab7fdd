"""Every exception ipyllm raises. Each prints as one line in IPython (``_render_traceback_``), yet stays
catchable by type; all are importable from ``ipyllm`` too.

::

    Exception
     ├── SettingError (traitlets.TraitError, ValueError)   a setting was refused; the old value stays
     │    └── UnknownSettingError (AttributeError)        no setting has this name (config.budget = 5); close match named
     └── LLMError                                           a model call failed; ``.usage`` is its row
          ├── MissingKeyError                               no API key for the provider
          ├── AuthenticationError                           the provider refused the key (401, 403)
          ├── UnknownModelError                             neither litellm nor the provider knows the model
          ├── RateLimitError                                still rate limited (429) after every retry
          ├── ProviderUnavailableError                      connection errors, timeouts, 5xx after every retry
          ├── RequestRejectedError                          400/422, context window, content policy
          ├── StreamBrokenError                             the stream broke after text arrived; ``.partial``
          ├── BudgetExceededError                           not sent: a spending limit leaves too little; ``.refusal``
          ├── InvalidOutputError                            the reply does not fit ``schema=``; ``.raw``
          ├── BatchError                                    ``map(errors="raise")``: rows failed; ``.result``, ``.batch``
          └── InvalidInputError (TypeError, ValueError)     not sent: a bad prompt, text or keyword; no row

    KeyboardInterrupt
     ├── Interrupted                                        Ctrl-C during a call; ``.usage`` is its ``interrupted`` row
     ├── BatchInterrupted                                   Ctrl-C during a ``map``; ``.result`` holds what came
     └── BatchDetached                                      Ctrl-C while waiting for a provider batch: the waiting
                                                            stopped, the batch goes on; ``.handle`` is the batch

    LedgerUnavailableError                                  internal: the ledger cannot be used (never reaches a caller:
                                                            rows stay in memory and one line says so)

An interrupted call records an ``interrupted`` row (what was sent and received so far, counted locally) and
raises ``Interrupted``: still a ``KeyboardInterrupt`` to ``except`` clauses, shown as one line.

A provider's failure is never chained: litellm's exception can repeat the key (OpenAI echoes a wrong one), so
ipyllm raises its own error with neither ``__cause__`` nor ``__context__``, and keeps the provider's own words,
the key removed, as ``.provider_message``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traitlets import TraitError

if TYPE_CHECKING:
    from ipyllm._usage import UsageRow

__all__ = [
    "AuthenticationError",
    "BatchDetached",
    "BatchError",
    "BatchInterrupted",
    "BudgetExceededError",
    "Interrupted",
    "InvalidInputError",
    "InvalidOutputError",
    "LLMError",
    "LedgerUnavailableError",
    "MissingKeyError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RequestRejectedError",
    "SettingError",
    "StreamBrokenError",
    "UnknownModelError",
    "UnknownSettingError",
]


class SettingError(TraitError, ValueError):
    """A setting was given a value it does not allow; the old value stays."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name

    @classmethod
    def refused(cls, name: str, value: Any, allowed: str) -> SettingError:
        shown = "the API key" if name == "api_key" else f"{value:g}" if isinstance(value, float) else repr(value)
        return cls(f"{name} must be {allowed} (got {shown}); the old value stays.", name)

    def _render_traceback_(self) -> list[str]:
        # IPython prints this instead of a traceback.
        return [f"SettingError: {self}"]


class UnknownSettingError(SettingError, AttributeError):  # type: ignore[misc]  # name: str here, str | None there
    """No setting has this name (a typo such as ``config.budget = 5``): a ``SettingError``, and the
    ``AttributeError`` Python raises for an attribute an object does not take."""


class LLMError(Exception):
    """A model call failed after its retries. ``str()`` says what happened and what to do next."""

    status_code: int | None = None

    def __init__(self, message: str, *, status_code: int | None = None, usage: UsageRow | None = None, provider_message: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.usage = usage
        #: What the provider said, on one line, the key removed ("" when it said nothing).
        self.provider_message = provider_message

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
    """The call was not sent: a spending limit leaves too little for its input and a useful reply.

    ``refusal`` is the limit's headroom when it was refused (spent, held by calls in flight, the limit); None
    for a model with no known price.
    """

    refusal: Any = None


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


class InvalidInputError(LLMError, TypeError, ValueError):
    """Nothing was sent: the prompt, the texts or a keyword cannot make a valid request (no usage row)."""


class InvalidOutputError(LLMError):
    """The reply is not JSON that fits the schema; ``.raw`` is the reply's text, ``.usage`` the call's row."""

    #: The error kind of a ``map`` row whose reply does not fit.
    kind = "invalid_output"

    def __init__(self, detail: str, *, raw: str = "", schema: str = "the schema", **kwargs: Any) -> None:
        super().__init__(f"the reply does not fit {schema} ({detail}): its text is in .raw; describe the fields in the prompt", **kwargs)
        self.detail = detail
        self.raw = raw


class BatchError(LLMError):
    """``errors="raise"``: some rows failed; ``.result`` holds every answer that came, ``.batch`` the details."""

    def __init__(self, message: str, batch: Any) -> None:
        super().__init__(message)
        self.batch = batch
        self.result = batch.result


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: the calls in flight were cancelled; ``.result`` holds the answers that came."""

    def __init__(self, batch: Any) -> None:
        super().__init__(batch.interrupted_message())
        self.batch = batch
        self.result = batch.result

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self.args[0]}"]


class BatchDetached(KeyboardInterrupt):
    """Ctrl-C while waiting for a provider batch (``map(via="batch")``, ``.wait()``): the waiting stopped, not the
    batch, which goes on at the provider; ``.handle`` is it (``.wait()``, ``.result()``, ``.cancel()``)."""

    def __init__(self, message: str, handle: Any) -> None:
        super().__init__(message)
        self.handle = handle

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self.args[0]}"]


class LedgerUnavailableError(Exception):
    """The ledger cannot be used; the message says what to do.

    ``transient``: the store keeps trying by itself (a server that is down), so the session goes on using it.
    ``said``: the store has said so itself (one line per outage), so the caller says nothing more.
    """

    def __init__(self, message: str, *, transient: bool = False, said: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.said = said
