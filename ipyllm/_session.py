"""A session: one configuration, one call engine, one set of records (rows and cache) and the budgets over them.

Data flows one way: caller -> ``config.snapshot(**overrides)`` -> ``Prepared`` (checked, cache key) -> cache? ->
budget? -> ``Client`` (retries) -> reply and usage row -> records (memory, then the ledger) -> frame. Every call
leaves exactly one row, whatever its outcome: ``ok``, ``error``, ``cached``, ``over_budget`` or ``interrupted``.

Safe to share between threads: the configuration snapshots settings per call, the records open their store
under a lock, the budgets take holds under theirs, and the memory rows append under theirs. ``ipyllm.Session``
(in ``_api``) adds the public methods (``complete``, ``acomplete``, ``embed``, ``estimate``, ``usage``, ``map``,
``amap``) over the paths here; the module functions use a default session.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ipyllm._budget import Budgets, Reservation, host_name, notebook_path, user_name
from ipyllm._calls import Prepared, prepare_chat, prepare_embedding, split_overrides
from ipyllm._config import LLMConfig, Settings
from ipyllm._engine import Client, Embeddings, Reply
from ipyllm._litellm import resolve_provider
from ipyllm._records import Records
from ipyllm._retry import RetryNote
from ipyllm._store import MemoryLedger, Store
from ipyllm._usage import UsageRow

__all__ = ["Session", "current_cell"]


def current_cell() -> int | None:
    """The execution count of the running cell (its ``In[N]``), or None outside IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    # The displayhook numbers Out[N] as In[N]; IPython 9 has already counted the running cell, 8 had not.
    count = getattr(getattr(shell, "displayhook", None), "prompt_count", None)
    return count if isinstance(count, int) and count > 0 else None


class Session:
    """A session of its own: configuration ``.config``, a client, records (rows and cache) and budgets.

    Parameters
    ----------
    config
        The configuration to use (``ipyllm.config`` for the default session); by default a new one, read from
        the ``LLM_*`` environment variables, with ``settings`` applied.
    client
        The call engine (tests inject one with stand-in functions).
    ledger
        Where the session's rows are kept in memory.
    id
        The session's id, in every row it writes (a new one by default).
    **settings
        Settings for this session (``model=``, ``usage_db=``, ``budget_usd=``, ...), validated like any setting.
    """

    #: The latest ``map`` of this session (finished, failed or interrupted): set by the batch that ran.
    last_batch: Any = None

    def __init__(
        self,
        *,
        config: LLMConfig | None = None,
        client: Client | None = None,
        ledger: MemoryLedger | None = None,
        id: str | None = None,  # noqa: A002 - the session's id, as in every row
        **settings: Any,
    ) -> None:
        self.id = id or uuid.uuid4().hex[:12]
        self.config = config if config is not None else LLMConfig(environ=os.environ)
        if settings:
            self.config.update(**settings)
        self.client = client or Client()
        self.records = Records(self.id, self.config, ledger)
        self.budgets = Budgets(self.id, self.records.memory, self.records.store, self.records.budget_warning)

    def __repr__(self) -> str:
        return f"<ipyllm.Session {self.id}: {self.config.model}, {len(self.ledger)} calls>"

    # -- what the layers below see --------------------------------------------------------------------------
    @property
    def ledger(self) -> MemoryLedger:
        """This session's rows in memory (always complete, whatever happens to the ledger)."""
        return self.records.memory

    def store(self) -> Store | None:
        """The ledger ``usage_db`` names (None for ``:memory:`` or a ledger given up)."""
        return self.records.store()

    def close(self) -> None:
        """Close the session's ledger connections (rows waiting for a server are written first, briefly)."""
        self.records.close()

    def split_overrides(self, overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
        """Per-call settings (validated like any setting) and the rest, passed to litellm as is."""
        return split_overrides(self.config, overrides)

    def stamper(self, source: str, batch: str | None = None) -> Callable[[UsageRow], UsageRow]:
        """Stamps rows with this session, the running cell, ``source``, who and where."""
        cell = current_cell()
        user, host, notebook = self.config.user or user_name(), host_name(), notebook_path()

        def stamp(row: UsageRow) -> UsageRow:
            row.session, row.cell, row.source, row.batch, row.user, row.host = self.id, cell, source, batch, user, host
            row.notebook = notebook
            return row

        return stamp

    def recorder(self, source: str, batch: str | None = None) -> Callable[..., None]:
        """A report callback that stamps rows (``stamper``) and files them."""
        stamp = self.stamper(source, batch)

        def record(row: UsageRow, release: str | None = None) -> None:
            self.records.record(stamp(row), release)

        return record

    def reserve(self, prepared: Prepared, need: Callable[[], Any] | None = None, *, quiet: bool = False) -> Reservation:
        """Size the call to every limit set and hold its worst case, or refuse it (``BudgetExceededError``)."""
        settings, model = prepared.settings, prepared.model
        provider = resolve_provider(model, settings.base_url)
        return self.budgets.reserve(settings, prepared.kind, model, provider, need or prepared.need, prepared.record, quiet=quiet)

    def prepare_chat(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        overrides: dict[str, Any],
        *,
        source: str,
        use_cache: bool = True,
        schema: Any = None,
        caller: str = "complete",
        images: Any = None,
        files: Any = None,
    ) -> Prepared:
        """The call checked, its schema applied and its cache keyed (``_calls.prepare_chat``), its rows filed here."""
        return prepare_chat(
            self.config,
            prompt_or_messages,
            overrides,
            self.recorder(source),
            use_cache=use_cache,
            schema=schema,
            caller=caller,
            images=images,
            files=files,
        )

    # -- the calls: from the cache, or sent through the client within a budget reservation --------------------
    def chat(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        *,
        source: str,
        stream: bool = False,
        on_text: Callable[[str], Any] | None = None,
        on_retry: Callable[[RetryNote], Any] | None = None,
        on_loading: Callable[[], Any] | None = None,
        use_cache: bool = True,
        schema: Any = None,
        images: Any = None,
        files: Any = None,
        **overrides: Any,
    ) -> Reply:
        """One chat call: from the cache, or sent through the client within a budget reservation.

        ``on_loading`` is called when the call must first wait for litellm's import (a cache hit never does).
        """
        prepared = self.prepare_chat(
            prompt_or_messages, overrides, source=source, use_cache=use_cache, schema=schema, images=images, files=files
        )
        hit = prepared.cached(self.records, on_text)
        if isinstance(hit, Reply):
            return prepared.finish(hit)
        prepared.wait_for_litellm(on_loading)
        settings = prepared.settings
        with self.reserve(prepared) as reservation:
            reply = self.client.chat(
                settings,
                prepared.payload,
                report=reservation.report,
                stream=stream,
                on_text=on_text,
                on_retry=on_retry,
                extra=prepared.extra,
                cap=reservation.cap,
            )
        prepared.finish(reply, reservation)
        prepared.keep(reply, self.records.cache_put)
        return reply

    async def achat(self, prepared: Prepared, on_retry: Callable[[RetryNote], Any] | None) -> Reply:
        """``chat`` as a coroutine (``litellm.acompletion``, ``tenacity.AsyncRetrying``), not streamed, on ipyllm's loop."""
        hit = prepared.cached(self.records)
        if isinstance(hit, Reply):
            return prepared.finish(hit)
        with self.reserve(prepared) as reservation:
            reply = await self.client.achat(
                prepared.settings, prepared.payload, report=reservation.report, on_retry=on_retry, extra=prepared.extra, cap=reservation.cap
            )
        prepared.finish(reply, reservation)
        prepared.keep(reply, self.records.cache_put)
        return reply

    def embedding(self, texts: str | Sequence[str], on_retry: Callable[[RetryNote], Any] | None, overrides: dict[str, Any]) -> Embeddings:
        """One embeddings call: from the cache, or sent through the client within a budget reservation."""
        prepared = prepare_embedding(self.config, texts, overrides, self.recorder("api"))
        hit = prepared.cached(self.records)
        if isinstance(hit, Embeddings):
            return hit
        with self.reserve(prepared) as reservation:
            vectors = self.client.embed(
                prepared.settings, prepared.payload, report=reservation.report, on_retry=on_retry, extra=prepared.extra
            )
        prepared.keep(vectors, self.records.cache_put)
        return vectors
