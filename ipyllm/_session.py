"""A session: one configuration, one call engine, one set of records (rows and cache) and the budgets over them.

Data flows one way: caller -> ``config.snapshot(**overrides)`` -> ``Prepared`` (checked, cache key) -> cache? ->
budget? -> ``Client`` (retries) -> reply and usage row -> records (memory, then the ledger) -> frame. Every call
leaves exactly one row, whatever its outcome: ``ok``, ``error``, ``cached``, ``over_budget`` or ``interrupted``.

Safe to share between threads: the configuration snapshots settings per call, the records open their store
under a lock, the budgets take holds under theirs, and the memory rows append under theirs. ``ipyllm.Session``
(in ``_api``) adds ``map`` / ``amap``; the module functions use a default session.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipyllm import _loop
from ipyllm._budget import Budgets, Reservation, host_name, user_name
from ipyllm._calls import Prepared, cache_key
from ipyllm._config import SETTING_NAMES, LLMConfig, Settings
from ipyllm._cost import Estimate, estimate
from ipyllm._engine import Client, Embeddings, Reply, as_messages
from ipyllm._litellm import resolve_provider
from ipyllm._records import Records
from ipyllm._retry import RetryNote
from ipyllm._schema import Schema
from ipyllm._store import MemoryLedger, Store
from ipyllm._usage import UsageRow
from ipyllm._validate import check_encodable, check_keywords, check_prompt, check_texts
from ipyllm.errors import SettingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Session", "current_cell"]

# Arguments ipyllm sets itself: passing them would let litellm or the OpenAI SDK retry beneath our policy.
_RESERVED = {"max_retries": "num_retries", "stream_options": "stream", "messages": "prompt_or_messages"}


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
        for name, instead in _RESERVED.items():
            if name in overrides:
                raise SettingError(f"{name} is set by ipyllm: use {instead} instead", name)
        known = {k: v for k, v in overrides.items() if k in SETTING_NAMES}
        extra = {k: v for k, v in overrides.items() if k not in SETTING_NAMES}
        return self.config.snapshot(**known), extra

    def stamper(self, source: str, batch: str | None = None) -> Callable[[UsageRow], UsageRow]:
        """Stamps rows with this session, the running cell, ``source``, who and where."""
        cell = current_cell()
        user, host = self.config.user or user_name(), host_name()

        def stamp(row: UsageRow) -> UsageRow:
            row.session, row.cell, row.source, row.batch, row.user, row.host = self.id, cell, source, batch, user, host
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

    # -- preparing a call -----------------------------------------------------------------------------------
    def prepare_chat(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        overrides: dict[str, Any],
        *,
        source: str,
        use_cache: bool = True,
        schema: Any = None,
        caller: str = "complete",
    ) -> Prepared:
        """Check the input (nothing is sent, and no row written, for bad input), apply the schema, key the cache."""
        started = time.perf_counter()
        settings, extra = self.split_overrides(overrides)
        check_prompt(prompt_or_messages)
        messages = as_messages(prompt_or_messages, settings.system)
        check_encodable(messages)
        if extra:  # resolving the provider needs litellm, which a cache hit must not wait for
            check_keywords("chat", settings.model, resolve_provider(settings.model, settings.base_url), extra, caller)
        shape = Schema.of(schema) if schema is not None else None
        if shape is not None:
            messages, extra = shape.request(settings, messages, extra)
        key = cache_key("chat", settings, messages, extra) if settings.cache and use_cache else None
        return Prepared("chat", settings, messages, extra, key, self.recorder(source), started, shape)

    def prepare_embedding(self, texts: str | Sequence[str], overrides: dict[str, Any]) -> Prepared:
        started = time.perf_counter()
        if "model" in overrides:
            overrides["embedding_model"] = overrides.pop("model")
        settings, extra = self.split_overrides(overrides)
        items = check_texts(texts)
        if extra:
            check_keywords(
                "embedding", settings.embedding_model, resolve_provider(settings.embedding_model, settings.base_url), extra, "embed"
            )
        key = cache_key("embedding", settings, items, extra) if settings.cache else None
        return Prepared("embedding", settings, items, extra, key, self.recorder("api"), started)

    def cached(self, prepared: Prepared, on_text: Callable[[str], Any] | None = None) -> Reply | Embeddings | None:
        """The prepared call's answer from the cache (a ``cached`` row), or None."""
        if prepared.key is None:
            return None
        return prepared.from_cache(self.records.cache_get(prepared.key), on_text)

    def keep(self, prepared: Prepared, result: Reply | Embeddings) -> None:
        """Keep what of the result the cache keeps."""
        entry = prepared.entry(result) if prepared.key is not None else None
        if prepared.key is not None and entry is not None:
            self.records.cache_put(prepared.key, prepared.kind, prepared.model, entry)

    # -- calls ------------------------------------------------------------------------------------------------
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
        **overrides: Any,
    ) -> Reply:
        """One chat call: from the cache, or sent through the client within a budget reservation.

        ``on_loading`` is called when the call must first wait for litellm's import (a cache hit never does).
        """
        prepared = self.prepare_chat(prompt_or_messages, overrides, source=source, use_cache=use_cache, schema=schema)
        hit = self.cached(prepared, on_text)
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
        self.keep(prepared, reply)
        return reply

    async def _send(self, prepared: Prepared, on_retry: Callable[[RetryNote], Any] | None) -> Reply:
        """``chat`` as a coroutine (``litellm.acompletion``, ``tenacity.AsyncRetrying``), not streamed."""
        hit = self.cached(prepared)
        if isinstance(hit, Reply):
            return prepared.finish(hit)
        with self.reserve(prepared) as reservation:
            reply = await self.client.achat(
                prepared.settings, prepared.payload, report=reservation.report, on_retry=on_retry, extra=prepared.extra, cap=reservation.cap
            )
        prepared.finish(reply, reservation)
        self.keep(prepared, reply)
        return reply

    def complete(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        *,
        stream: bool = False,
        on_text: Callable[[str], Any] | None = None,
        on_retry: Callable[[RetryNote], Any] | None = None,
        schema: Any = None,
        **overrides: Any,
    ) -> Reply:
        """Send one chat request, retried, and return the reply.

        Parameters
        ----------
        prompt_or_messages
            A prompt (sent as one user message) or a list of OpenAI-style messages.
        stream
            Receive the reply in pieces; ``on_text`` is called with each.
        on_retry
            Called with a ``RetryNote`` before each retry wait.
        schema
            A pydantic model class or a JSON-schema dict: the reply must be JSON that fits it (sent as
            ``response_format`` where litellm says the model supports it, else as an instruction); the
            validated object is ``reply.parsed``.
        **overrides
            Settings for this call only (``model``, ``temperature``, ``max_tokens``, ``system``, ``cache``, ...);
            other keywords (``top_p``, ``response_format``, ...) go to ``litellm.completion`` once checked against
            what litellm accepts for the model; provider-specific extras go in ``extra_body={...}``.

        Returns
        -------
        Reply
            A ``str`` of the reply text, with ``.usage`` (its usage row), ``.messages`` and ``.response``.

        Raises
        ------
        ipyllm.LLMError
            When the call fails after its retries, or a budget refuses it (a subclass says why; ``.usage`` is
            the row); ``InvalidOutputError`` when the reply does not fit ``schema`` (``.raw`` is its text).
        ipyllm.InvalidInputError
            Before sending (no row): a prompt or message of the wrong shape, text that is not valid UTF-8, an
            unknown keyword (named with its close match).
        """
        return self.chat(prompt_or_messages, source="api", stream=stream, on_text=on_text, on_retry=on_retry, schema=schema, **overrides)

    async def acomplete(
        self,
        prompt_or_messages: str | Sequence[dict[str, Any]],
        *,
        on_retry: Callable[[RetryNote], Any] | None = None,
        schema: Any = None,
        **overrides: Any,
    ) -> Reply:
        """``complete`` as a coroutine: ``await ipyllm.acomplete(...)`` does not block the event loop.

        The same call otherwise (reserved against the budgets, retried with the session's policy through
        ``tenacity.AsyncRetrying``, one usage row, the cache); not streamed.
        """
        # Prepared here (the running cell, the settings of the moment), sent from ipyllm's own loop.
        prepared = self.prepare_chat(prompt_or_messages, overrides, source="api", schema=schema, caller="acomplete")
        return await _loop.run(self._send(prepared, on_retry))  # type: ignore[no-any-return]

    def embed(self, texts: str | Sequence[str], *, on_retry: Callable[[RetryNote], Any] | None = None, **overrides: Any) -> Embeddings:
        """Embed texts with ``embedding_model`` (Azure: ``embedding_deployment`` and ``api_version``).

        ``model=`` is accepted for ``embedding_model=``. Returns one vector per text, with ``.usage``.
        """
        prepared = self.prepare_embedding(texts, overrides)
        hit = self.cached(prepared)
        if isinstance(hit, Embeddings):
            return hit
        with self.reserve(prepared) as reservation:
            vectors = self.client.embed(
                prepared.settings, prepared.payload, report=reservation.report, on_retry=on_retry, extra=prepared.extra
            )
        self.keep(prepared, vectors)
        return vectors

    def estimate(self, prompt_or_messages: str | Sequence[dict[str, Any]], **overrides: Any) -> Estimate:
        """What a chat call would cost, without sending it: what ``%%llm --dry-run`` shows.

        Takes what ``complete`` takes (settings for this call as overrides: ``model``, ``max_tokens``,
        ``system``, ...). The prompt's tokens are counted with litellm's ``token_counter`` and priced with
        litellm's price map (or ``prices``).

        Returns
        -------
        Estimate
            ``model``, ``provider``, ``prompt_tokens``, ``input_cost``, ``output_cost_per_token``, ``max_tokens``;
            ``model_max_output``, ``output_tokens`` (``max_tokens``, else the model's maximum output, else 32,768),
            ``max_output_cost`` and ``total`` (the most the call may cost). Costs are NaN where the model has no
            known price.

        Raises
        ------
        ipyllm.InvalidInputError
            As ``complete`` does: a prompt of the wrong shape, an unknown keyword (an estimate that left it out
            would not be the call's).
        """
        settings, extra = self.split_overrides(overrides)
        check_prompt(prompt_or_messages)
        if extra:  # a keyword complete would refuse is refused here too, rather than left out of the estimate
            check_keywords("chat", settings.model, resolve_provider(settings.model, settings.base_url), extra, "estimate")
        return estimate(settings, as_messages(prompt_or_messages, settings.system))

    def usage(self, all_sessions: bool = False) -> pd.DataFrame:
        """The usage frame: one row per call, in call order.

        This session's calls; with ``all_sessions``, every call in the ledger (``usage_db``) too.
        """
        return self.records.frame(all_sessions)
