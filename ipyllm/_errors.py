"""ipyllm's exceptions. Each prints as one line in IPython (``_render_traceback_``), yet stays catchable by type.

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
          ├── BudgetExceededError                           not sent: the call could pass a spending limit
          └── InvalidInputError (TypeError, ValueError)     not sent: a bad prompt, text or keyword; no row

    KeyboardInterrupt
     └── Interrupted                                        Ctrl-C during a call; ``.usage`` is its ``interrupted`` row

An interrupted call records an ``interrupted`` row (what was sent and received so far, counted locally) and
raises ``Interrupted``: still a ``KeyboardInterrupt`` to ``except`` clauses, shown as one line.

A provider's failure is never chained: litellm's exception can repeat the key (OpenAI echoes a wrong one), so
ipyllm raises its own error with neither ``__cause__`` nor ``__context__``, and keeps the provider's own words,
the key removed, as ``.provider_message``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ipyllm._config import SettingError, UnknownSettingError

if TYPE_CHECKING:
    from ipyllm._config import Settings
    from ipyllm._ledger import UsageRow

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "Interrupted",
    "InvalidInputError",
    "LLMError",
    "MissingKeyError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RequestRejectedError",
    "SettingError",
    "StreamBrokenError",
    "UnknownModelError",
    "UnknownSettingError",
]


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


# -- what the provider said, safe to show ---------------------------------------------------------------

_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-]{6,}")
# Environment variables whose values are credentials (OPENAI_API_KEY, AZURE_AD_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_VARIABLE = re.compile(r"(_API_KEY|_KEY|_TOKEN|_SECRET|_PASSWORD)$|SECRET_ACCESS_KEY$")


def redact(text: str, settings: Settings | None = None) -> str:
    """Remove the session's key, any credential variable's value, and anything shaped like a key, from text."""
    secrets = [str.__str__(settings.api_key.reveal())] if settings is not None and settings.api_key else []
    secrets += [value for name, value in os.environ.items() if _SECRET_VARIABLE.search(name) and len(value) >= 8]
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "****")
    return _KEY_PATTERN.sub(r"\1****", text)


_PREFIXES = (
    re.compile(r"^(litellm\.)?\w+(Error|Exception|Timeout)?: "),  # litellm.AuthenticationError: AuthenticationError:
    re.compile(r"^\w+Exception - "),  # OpenAIException - the server's words
    re.compile(r"^Error code: \d+ - "),
)


def provider_words(exc: BaseException, settings: Settings | None = None, limit: int = 160) -> str:
    """The provider's own words on one line, without litellm's prefixes, the key removed, shortened to ``limit``."""
    body = getattr(exc, "body", None)
    text = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else None
    if not text:
        text = str(getattr(exc, "message", None) or exc)
        text = text.split(" Original exception:")[0]
        for _ in range(4):
            for prefix in _PREFIXES:
                text = prefix.sub("", text.strip())
    line = " ".join(redact(text, settings).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
