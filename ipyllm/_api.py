"""The Python API: ``ipyllm.Session``, and the module functions (``ipyllm.complete``, ``map``, ``usage``, ...) as thin
wrappers over a default session whose configuration is ``ipyllm.config``.

The default session is looked up at every call (``_api.session``), so a test or a host application can put
another in its place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipyllm import _batch
from ipyllm._batchdata import Batch, BatchEstimate
from ipyllm._config import config
from ipyllm._cost import Estimate
from ipyllm._engine import Embeddings, Reply
from ipyllm._retry import RetryNote
from ipyllm._session import Session as _Session

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SESSION_ID", "Session", "acomplete", "amap", "complete", "embed", "estimate", "last_batch", "map", "session", "usage"]


class Session(_Session):
    """A session of its own: its configuration (``.config``), client, ledger and budgets, with the API's functions
    as methods (``complete``, ``acomplete``, ``embed``, ``estimate``, ``map``, ``amap``, ``usage``).

    ``ipyllm.Session(model="gpt-4o", usage_db="team.sqlite", budget_usd=1)`` starts from the ``LLM_*``
    environment variables, not from ``ipyllm.config``; two sessions in one process keep their settings, rows
    and ledgers apart, and each is safe to share between threads. The module functions use a default session
    whose configuration is ``ipyllm.config``.
    """

    def map(self, template: str | Callable[[Any], Any], data: Any, **options: Any) -> Any:
        """One prompt per row of ``data``, sent concurrently; see ``ipyllm.map``."""
        return _batch.map(self, template, data, **options)

    async def amap(self, template: str | Callable[[Any], Any], data: Any, **options: Any) -> Any:
        """``map`` as a coroutine; see ``ipyllm.amap``."""
        return await _batch.amap(self, template, data, **options)


#: The default session: the one the module functions, the magics and the picker use.
session = Session(config=config)
#: The default session's id, in every row it writes.
SESSION_ID = session.id


def complete(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    *,
    stream: bool = False,
    on_text: Callable[[str], Any] | None = None,
    on_retry: Callable[[RetryNote], Any] | None = None,
    schema: Any = None,
    **overrides: Any,
) -> Reply:
    return session.complete(prompt_or_messages, stream=stream, on_text=on_text, on_retry=on_retry, schema=schema, **overrides)


async def acomplete(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    *,
    on_retry: Callable[[RetryNote], Any] | None = None,
    schema: Any = None,
    **overrides: Any,
) -> Reply:
    return await session.acomplete(prompt_or_messages, on_retry=on_retry, schema=schema, **overrides)


def embed(texts: str | Sequence[str], *, on_retry: Callable[[RetryNote], Any] | None = None, **overrides: Any) -> Embeddings:
    return session.embed(texts, on_retry=on_retry, **overrides)


def estimate(prompt_or_messages: str | Sequence[dict[str, Any]], **overrides: Any) -> Estimate:
    return session.estimate(prompt_or_messages, **overrides)


def usage(all_sessions: bool = False) -> pd.DataFrame:
    return session.usage(all_sessions)


def map(  # noqa: A001 - ipyllm.map, as SPEC names it
    template: str | Callable[[Any], Any],
    data: Any,
    *,
    concurrency: int = 8,
    schema: Any = None,
    errors: str = "keep",
    resume: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    processes: int = 1,
    missing: str = "skip",
    **overrides: Any,
) -> Any | BatchEstimate:
    return _batch.map(
        session,
        template,
        data,
        concurrency=concurrency,
        schema=schema,
        errors=errors,
        resume=resume,
        progress=progress,
        dry_run=dry_run,
        processes=processes,
        missing=missing,
        **overrides,
    )


async def amap(
    template: str | Callable[[Any], Any],
    data: Any,
    *,
    concurrency: int = 8,
    schema: Any = None,
    errors: str = "keep",
    resume: bool = True,
    progress: bool = True,
    processes: int = 1,
    missing: str = "skip",
    **overrides: Any,
) -> Any:
    return await _batch.amap(
        session,
        template,
        data,
        concurrency=concurrency,
        schema=schema,
        errors=errors,
        resume=resume,
        progress=progress,
        processes=processes,
        missing=missing,
        **overrides,
    )


def last_batch() -> Batch | None:
    """The latest batch of the default session (finished, failed or interrupted): ``.result``, ``.errors``, ``.usage()``."""
    return session.last_batch


# The module functions say what the session's methods say.
complete.__doc__ = _Session.complete.__doc__
acomplete.__doc__ = _Session.acomplete.__doc__
embed.__doc__ = _Session.embed.__doc__
estimate.__doc__ = _Session.estimate.__doc__
usage.__doc__ = _Session.usage.__doc__
map.__doc__ = _batch.map.__doc__
amap.__doc__ = _batch.amap.__doc__
