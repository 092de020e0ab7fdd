"""A session's link to a provider's Files and Batches APIs: each request through litellm (``_litellm``'s batch
functions, the SDK's own retries off) under the session's tenacity retry policy, and a failure said in one line
as any call's is (``_explain``), never chained to litellm's exception (which can repeat the key)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipyllm._answers import endpoint
from ipyllm._config import Settings
from ipyllm._engine import common_arguments
from ipyllm._explain import explain
from ipyllm._litellm import BATCH_PROVIDERS
from ipyllm._retry import retried
from ipyllm.errors import LLMError, SettingError

__all__ = ["BatchGoneError", "BatchLink", "check_batchable"]


class BatchGoneError(Exception):
    """The provider no longer knows the batch (404): it cannot be waited for, nor its results taken."""


def check_batchable(model: str, provider: str | None) -> str:
    """The provider, if litellm can send its models through a Batch API; else ``SettingError`` in one line, before
    anything is sent."""
    if provider in BATCH_PROVIDERS:
        return provider
    who = f"{provider} models" if provider else "this model's provider"
    raise SettingError(
        f"via='batch': litellm cannot send {who} ({model}) through a Batch API; it can for {', '.join(BATCH_PROVIDERS)}: "
        "use via='live', or one of their models",
        "via",
    )


@dataclass
class BatchLink:
    """Where a map's batches go: the settings (key, endpoint, retry policy) and the provider. It is also what an
    explanation of a failure needs to know (``_explain.Destination``)."""

    settings: Settings
    provider: str
    sleep: Callable[[float], Any] = field(default=time.sleep)
    kind: str = "chat"
    model: str = ""
    target: str = ""

    def __post_init__(self) -> None:
        self.model = self.target = self.settings.model

    @property
    def where(self) -> str:
        return endpoint(self.settings.base_url, self.provider)

    def call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(connection, provider, *args)`` under the retry policy; ``BatchGoneError`` for a 404 on a batch,
        else one of ipyllm's errors saying ``what`` failed."""
        settings = self.settings
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            # Built afresh for each attempt: the key (masked in any repr) lives only in this frame and litellm's.
            return function(common_arguments(settings, settings.model), self.provider, *args)

        failure: LLMError | BatchGoneError
        try:
            return retried(attempt, settings, sleep=self.sleep)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404 and what.startswith("looking at"):
                failure = BatchGoneError(what)
            else:
                error = explain(exc, self, attempts)
                failure = type(error)(f"{what}: {error.message}", status_code=error.status_code, provider_message=error.provider_message)
        raise failure  # outside the except block: nothing chains litellm's exception
