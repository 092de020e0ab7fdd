"""The session: the Python API over the configuration, the client and the ledger.

Data flows one way: caller -> ``config.snapshot(**overrides)`` -> cache? -> budget? -> ``Client``
(retries) -> reply and usage row -> ledger (memory, then the SQLite file) -> frame. Every call leaves
exactly one row, whatever its outcome: ``ok``, ``error``, ``cached``, ``over_budget`` or ``interrupted``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ipyllm import _loop
from ipyllm._budget import Budgets, Need, Reservation, host_name, local_midnight, usd, user_name
from ipyllm._client import Client, Embeddings, Reply, as_messages
from ipyllm._config import SETTING_NAMES, Settings, config
from ipyllm._cost import Estimate, estimate_embedding
from ipyllm._cost import estimate as estimate_messages
from ipyllm._ledger import open_store, store_key
from ipyllm._litellm import litellm_loaded, load_litellm, resolve_provider
from ipyllm._notices import notice
from ipyllm._retry import RetryNote
from ipyllm._schema import Schema
from ipyllm._store import MemoryLedger, Store
from ipyllm._usage import UsageRow, to_frame
from ipyllm._validate import check_encodable, check_keywords, check_prompt, check_texts
from ipyllm.errors import Interrupted, InvalidOutputError, LedgerUnavailableError, SettingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SESSION_ID", "acomplete", "chat", "complete", "embed", "estimate", "local_midnight", "session", "usage", "usd"]

T = TypeVar("T")

#: This kernel session's id, in every row it writes.
SESSION_ID = uuid.uuid4().hex[:12]

# Arguments ipyllm sets itself: passing them would let litellm or the OpenAI SDK retry beneath our policy.
_RESERVED = {"max_retries": "num_retries", "stream_options": "stream", "messages": "prompt_or_messages"}


#: What the default ledger's place (the Jupyter data directory) depends on.
_DATA_DIR_VARIABLES = ("JUPYTER_DATA_DIR", "JUPYTER_PLATFORM_DIRS", "XDG_DATA_HOME", "HOME", "APPDATA")


class Session:
    """This process's rows (in memory, always complete), its ledger file, its cache and its client."""

    def __init__(self, ledger: MemoryLedger | None = None, client: Client | None = None) -> None:
        self.id = SESSION_ID
        self.ledger = ledger or MemoryLedger()
        self.client = client or Client()
        self._stores: dict[str, Store | None] = {}
        self._keys: dict[Any, str] = {}
        self._warned: set[str] = set()
        self._memory_cache: dict[str, str] = {}
        self._spend_today: tuple[float, float, float] | None = None
        self.budgets = Budgets(self.id, self.ledger, self.store, self._budget_warning)

    # -- the ledger ------------------------------------------------------------------------------------------
    def store(self) -> Store | None:
        """The ledger named by ``usage_db``: a SQLite file or a team's server (None for ``:memory:`` or a file
        already found broken)."""
        name = config.usage_db
        if name == ":memory:":
            return None
        # Resolved once per name and environment (finding the Jupyter data directory takes 0.1 ms): every call asks.
        cached = (name, *map(os.environ.get, _DATA_DIR_VARIABLES)) if not name else name
        key = self._keys.get(cached)
        if key is None:
            key = self._keys[cached] = store_key(name)
        if f"store:{key}" in self._warned:
            return None
        if key not in self._stores:
            store = self._stores[key] = open_store(name)
            for other_key, other in list(self._stores.items()):
                if other is not None and other is not store and store is not None and other.name == store.name:
                    other.close()  # the same server with another password: its waiting rows are in the same spool
                    del self._stores[other_key]
        return self._stores[key]

    def using_store(self, action: Callable[[Store], T]) -> T | None:
        """Run ``action`` on the ledger; if it cannot be used, say so once and return None.

        A file that is not a ledger is given up for the session; a server that is away, or a file that cannot
        be written for now, is tried again (the store has said so itself, once per outage).
        """
        store = self.store()
        if store is None:
            return None
        try:
            return action(store)
        except LedgerUnavailableError as error:
            if not error.said:
                self.warn_once(f"away:{error}" if error.transient else f"store:{store.name}", str(error))
            return None

    def spend_today(self, user: str) -> tuple[float, float] | None:
        """The team's and ``user``'s spend since local midnight on a shared ledger (None otherwise).

        Other sessions' spend is read from the server at most every two seconds (the picker asks after every
        call); this session's comes from memory, so its calls show at once, written to the server or not.
        """
        store = self.store()
        if store is None or not store.shared:
            return None
        midnight, now = local_midnight(), time.monotonic()
        if self._spend_today is None or now - self._spend_today[0] > 2:
            team = self.using_store(lambda s: s.spend(midnight, exclude_session=self.id))
            theirs = self.using_store(lambda s: s.spend(midnight, exclude_session=self.id, user=user))
            if team is None or theirs is None:
                return None
            self._spend_today = (now, team, theirs)
        mine = self.ledger.spend(since=midnight, session=self.id)
        mine_as_user = self.ledger.spend(since=midnight, session=self.id, user=user)
        return self._spend_today[1] + mine, self._spend_today[2] + mine_as_user

    def _budget_warning(self, key: str, message: str) -> None:
        """Budgets could not hold a call's cost in the ledger: said once, and the ledger given up (``store:``), unless
        the ledger said so itself (it cannot be written for now: its rows wait in its spool, and it is tried again)."""
        if any(message == getattr(store, "last_said", None) for store in list(self._stores.values())):
            return
        self.warn_once(key, message)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            notice(message)

    def record(self, row: UsageRow, release: str | None = None) -> None:
        """File a finished call's row: committed to the ledger (settling the hold ``release``), then in memory."""
        self.using_store(lambda store: store.append(row, release))
        self.ledger.append(row)

    def record_many(self, rows: list[UsageRow], entries: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """File finished rows (no holds to settle) and cache entries (key, kind, model, value) in one commit."""
        cached = [(key, kind, model, json.dumps(value)) for key, kind, model, value in entries]
        if self.store() is None:
            self._memory_cache.update((key, payload) for key, _, _, payload in cached)
        else:
            self.using_store(lambda store: store.append_many(rows, cached))
        for row in rows:
            self.ledger.append(row)

    def stamper(self, source: str, batch: str | None = None) -> Callable[[UsageRow], UsageRow]:
        """Stamps rows with this session, the running cell, ``source``, who and where."""
        cell = current_cell()
        user, host = config.user or user_name(), host_name()

        def stamp(row: UsageRow) -> UsageRow:
            row.session, row.cell, row.source, row.batch, row.user, row.host = self.id, cell, source, batch, user, host
            return row

        return stamp

    def recorder(self, source: str, batch: str | None = None) -> Callable[..., None]:
        """A report callback that stamps rows (``stamper``) and files them."""
        stamp = self.stamper(source, batch)

        def record(row: UsageRow, release: str | None = None) -> None:
            self.record(stamp(row), release)

        return record

    def reserve(
        self, settings: Settings, kind: str, model: str, need: Callable[[], Need], record: Callable[..., None], *, quiet: bool = False
    ) -> Reservation:
        """Size the call to every limit set and hold its worst case, or refuse it (``BudgetExceededError``)."""
        return self.budgets.reserve(settings, kind, model, resolve_provider(model, settings.base_url), need, record, quiet=quiet)

    def frame(self, all_sessions: bool = False) -> pd.DataFrame:
        mine = to_frame(self.ledger.rows(None if all_sessions else self.id))
        if not all_sessions:
            return mine
        others = self.using_store(lambda store: store.frame(exclude_session=self.id))
        if others is None or others.empty:
            return mine
        import pandas as pd

        both = pd.concat([others, mine], ignore_index=True) if not mine.empty else others
        return both.sort_values("timestamp", kind="stable", ignore_index=True)

    # -- the response cache ------------------------------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        if self.store() is None:
            payload = self._memory_cache.get(key)
        else:
            payload = self.using_store(lambda store: store.cache_get(key))
        return json.loads(payload) if payload else None

    def cache_get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The cached answers among ``keys``, looked up at once."""
        if self.store() is None:
            found: dict[str, str] = {key: self._memory_cache[key] for key in keys if key in self._memory_cache}
        else:
            found = self.using_store(lambda store: store.cache_get_many(keys)) or {}
        return {key: json.loads(payload) for key, payload in found.items() if payload}

    def cache_put(self, key: str, kind: str, model: str, value: dict[str, Any]) -> None:
        payload = json.dumps(value)
        if self.store() is None:
            self._memory_cache[key] = payload
        else:
            self.using_store(lambda store: store.cache_put(key, kind, model, payload))


session = Session()


def current_cell() -> int | None:
    """The execution count of the running cell (its ``In[N]``), or None outside IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    # The displayhook numbers Out[N] as In[N]; IPython 9 has already counted the running cell, 8 had not.
    count = getattr(getattr(shell, "displayhook", None), "prompt_count", None)
    return count if isinstance(count, int) and count > 0 else None


def split_overrides(overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """Per-call settings (validated like any setting) and the rest, passed to litellm as is."""
    for name, instead in _RESERVED.items():
        if name in overrides:
            raise SettingError(f"{name} is set by ipyllm: use {instead} instead", name)
    known = {k: v for k, v in overrides.items() if k in SETTING_NAMES}
    extra = {k: v for k, v in overrides.items() if k not in SETTING_NAMES}
    return config.snapshot(**known), extra


def cache_key(kind: str, settings: Settings, payload: Any, extra: dict[str, Any]) -> str:
    """Everything that changes the answer: model, input, sampling, endpoint and extra parameters."""
    material = {
        "kind": kind,
        "model": settings.model if kind == "chat" else settings.embedding_model,
        "deployment": settings.embedding_deployment if kind == "embedding" else None,
        "input": payload,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens if kind == "chat" else None,
        "base_url": settings.base_url,
        "api_version": settings.api_version,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _cached_row(kind: str, model: str, settings: Settings, hit: dict[str, Any], started: float) -> UsageRow:
    """The row of a call answered from the cache: without litellm, whose import takes seconds (the entry
    carries its provider; an entry written before it did is resolved through litellm)."""
    prompt, completion = hit.get("prompt_tokens"), hit.get("completion_tokens")
    provider = hit["provider"] if "provider" in hit else resolve_provider(model, settings.base_url)
    return UsageRow(
        kind=kind,
        model=model,
        provider=provider,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=None if prompt is None else prompt + (completion or 0),
        cost_usd=0.0,
        latency_s=time.perf_counter() - started,
        attempts=0,
        status="cached",
    )


def wait_for_litellm(on_loading: Callable[[], Any] | None = None) -> None:
    """Import litellm, or wait for the warm-up thread to finish importing it; ``on_loading`` is told first.

    Ctrl-C during the wait is one line: nothing had been sent.
    """
    if litellm_loaded():
        return
    if on_loading is not None:
        on_loading()
    try:
        load_litellm()
        return
    except KeyboardInterrupt:
        pass
    raise Interrupted("interrupted while litellm was loading; nothing was sent")


@dataclass
class ChatRequest:
    """One chat call, prepared: settings, messages and extras (schema applied), its recorder and cache key."""

    settings: Settings
    messages: list[dict[str, Any]]
    extra: dict[str, Any]
    record: Callable[..., None]
    key: str | None
    shape: Schema | None
    started: float

    def wait_for_litellm(self, on_loading: Callable[[], Any] | None) -> None:
        """Wait for litellm's import (``on_loading`` is told first); Ctrl-C meanwhile records an ``interrupted`` row."""
        try:
            wait_for_litellm(on_loading)
        except Interrupted as interrupted:
            # Nothing was sent; the row still says the call was made and stopped.
            interrupted.usage = UsageRow(
                kind="chat",
                model=self.settings.model,
                cost_usd=0.0,
                latency_s=time.perf_counter() - self.started,
                attempts=0,
                status="interrupted",
                error=f"KeyboardInterrupt: {interrupted.message}",
            )
            self.record(interrupted.usage)
            raise

    def need(self) -> Need:
        return chat_need(self.settings, self.messages, self.extra)

    def cached(self, on_text: Callable[[str], Any] | None = None) -> Reply | None:
        """The cached answer (recorded as a ``cached`` row), or None (also for an empty answer an earlier version kept)."""
        if self.key is None or (hit := session.cache_get(self.key)) is None or not hit.get("text"):
            return None
        row = _cached_row("chat", self.settings.model, self.settings, hit, self.started)
        self.record(row)
        if on_text is not None:
            on_text(hit["text"])
        return self.finish(Reply(hit["text"], row, self.messages), store=False)

    def finish(self, reply: Reply, store: bool = True, reservation: Reservation | None = None) -> Reply:
        """Parse the reply against the schema (``InvalidOutputError`` if it does not fit), then cache it.

        An empty answer is said in one line and not cached: asked again, the model may well answer. A reply that a
        budget's output cap cut short says so (one line, and its footer), and is not cached either: with more
        budget left, the same request gets the whole answer.
        """
        cut = reservation is not None and cut_by_budget(reply, reservation)
        if self.shape is not None:
            try:
                reply.parsed = self.shape.parse(reply.text)
            except InvalidOutputError as error:
                error.usage = reply.usage
                raise
        if cut:
            assert reservation is not None
            notice(cut_message(reservation))  # says more than the note of an empty reply cut at its cap
        elif reply.note:
            notice(reply.note)
        if store and self.key is not None and reply.text and not cut:
            row = reply.usage
            session.cache_put(
                self.key,
                "chat",
                self.settings.model,
                {
                    "text": reply.text,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "provider": row.provider,
                },
            )
        return reply


def chat_need(settings: Settings, messages: list[dict[str, Any]], extra: dict[str, Any]) -> Need:
    """What a chat call may cost, for the budgets: its prompt counted and priced, the output price per token, and
    the most output it may bill (the user's ``max_tokens`` or ``max_completion_tokens``, else the model's maximum)."""
    guess = estimate_messages(settings, messages)
    asked = extra.get("max_completion_tokens")
    user_cap = settings.max_tokens or (asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None)
    ceilings = [cap for cap in (user_cap, guess.model_max_output) if cap]
    return Need(guess.input_cost, guess.output_cost_per_token, user_cap, min(ceilings) if ceilings else guess.output_tokens)


def cut_by_budget(reply: Reply, reservation: Reservation) -> bool:
    """Whether a budget's output cap cut the reply short; if so, its footer says so (``reply.cut``)."""
    room = reservation.capped_by
    if room is None or reply.finish_reason != "length":
        return False
    reply.cut = f"cut at {reservation.cap:,} tokens by {room.limit.setting}"
    return True


def cut_message(reservation: Reservation) -> str:
    """The one line that says a budget's output cap cut a reply short, and what to do."""
    room = reservation.capped_by
    assert room is not None
    setting = room.limit.setting
    return (
        f"the reply was cut at {reservation.cap:,} output tokens: all that {setting} ({usd(room.limit.limit, limit=True)}, "
        f"{usd(max(room.left, 0.0))} left before this call) could pay for after the prompt; raise {setting} for the whole reply"
    )


def prepare_chat(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    overrides: dict[str, Any],
    *,
    source: str,
    use_cache: bool = True,
    schema: Any = None,
    caller: str = "complete",
) -> ChatRequest:
    started = time.perf_counter()
    settings, extra = split_overrides(overrides)
    # Bad input is refused here, before the cache, the budget or the provider see it (no row, nothing sent).
    check_prompt(prompt_or_messages)
    messages = as_messages(prompt_or_messages, settings.system)
    check_encodable(messages)
    if extra:  # resolving the provider needs litellm, which a cache hit must not wait for
        check_keywords("chat", settings.model, resolve_provider(settings.model, settings.base_url), extra, caller)
    shape = Schema.of(schema) if schema is not None else None
    if shape is not None:
        messages, extra = shape.request(settings, messages, extra)
    key = cache_key("chat", settings, messages, extra) if settings.cache and use_cache else None
    return ChatRequest(settings, messages, extra, session.recorder(source), key, shape, started)


def chat(
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
    request = prepare_chat(prompt_or_messages, overrides, source=source, use_cache=use_cache, schema=schema)
    if (reply := request.cached(on_text)) is not None:
        return reply
    request.wait_for_litellm(on_loading)
    settings = request.settings
    with session.reserve(settings, "chat", settings.model, request.need, request.record) as reservation:
        reply = session.client.chat(
            settings,
            request.messages,
            report=reservation.report,
            stream=stream,
            on_text=on_text,
            on_retry=on_retry,
            extra=request.extra,
            cap=reservation.cap,
        )
    return request.finish(reply, reservation=reservation)


async def _send(request: ChatRequest, on_retry: Callable[[RetryNote], Any] | None) -> Reply:
    """``chat`` as a coroutine (``litellm.acompletion``, ``tenacity.AsyncRetrying``), not streamed."""
    if (reply := request.cached()) is not None:
        return reply
    settings = request.settings
    with session.reserve(settings, "chat", settings.model, request.need, request.record) as reservation:
        reply = await session.client.achat(
            settings, request.messages, report=reservation.report, on_retry=on_retry, extra=request.extra, cap=reservation.cap
        )
    return request.finish(reply, reservation=reservation)


def complete(
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
    return chat(prompt_or_messages, source="api", stream=stream, on_text=on_text, on_retry=on_retry, schema=schema, **overrides)


async def acomplete(
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
    request = prepare_chat(prompt_or_messages, overrides, source="api", schema=schema, caller="acomplete")
    return await _loop.run(_send(request, on_retry))


def embed(texts: str | Sequence[str], *, on_retry: Callable[[RetryNote], Any] | None = None, **overrides: Any) -> Embeddings:
    """Embed texts with ``embedding_model`` (Azure: ``embedding_deployment`` and ``api_version``).

    ``model=`` is accepted for ``embedding_model=``. Returns one vector per text, with ``.usage``.
    """
    started = time.perf_counter()
    if "model" in overrides:
        overrides["embedding_model"] = overrides.pop("model")
    settings, extra = split_overrides(overrides)
    items = check_texts(texts)
    if extra:
        check_keywords("embedding", settings.embedding_model, resolve_provider(settings.embedding_model, settings.base_url), extra)
    record = session.recorder("api")
    model = settings.embedding_model
    key = cache_key("embedding", settings, items, extra) if settings.cache else None
    if key is not None and (hit := session.cache_get(key)) is not None:
        row = _cached_row("embedding", model, settings, hit, started)
        record(row)
        return Embeddings(hit["vectors"], row)
    with session.reserve(
        settings, "embedding", model, lambda: Need(estimate_embedding(settings, items), output=False), record
    ) as reservation:
        vectors = session.client.embed(settings, items, report=reservation.report, on_retry=on_retry, extra=extra)
    if key is not None:
        session.cache_put(
            key,
            "embedding",
            model,
            {
                "vectors": list(vectors),
                "prompt_tokens": vectors.usage.prompt_tokens,
                "completion_tokens": 0,
                "provider": vectors.usage.provider,
            },
        )
    return vectors


def estimate(prompt_or_messages: str | Sequence[dict[str, Any]], **overrides: Any) -> Estimate:
    """What a chat call would cost, without sending it: what ``%%llm --dry-run`` shows.

    Takes what ``complete`` takes (settings for this call as overrides: ``model``, ``max_tokens``,
    ``system``, ...). The prompt's tokens are counted with litellm's ``token_counter`` and priced with
    litellm's price map (or ``prices``).

    Returns
    -------
    Estimate
        ``model``, ``provider``, ``prompt_tokens``, ``input_cost``, ``output_cost_per_token``, ``max_tokens``;
        ``model_max_output``, ``output_tokens`` (``max_tokens``, else the model's maximum output, else 32,768),
        ``max_output_cost`` and
        ``total`` (the most the call may cost). Costs are NaN where the model has no known price.

    Raises
    ------
    ipyllm.InvalidInputError
        As ``complete`` does: a prompt of the wrong shape, an unknown keyword (an estimate that left it out
        would not be the call's).
    """
    settings, extra = split_overrides(overrides)
    check_prompt(prompt_or_messages)
    if extra:  # a keyword complete would refuse is refused here too, rather than left out of the estimate
        check_keywords("chat", settings.model, resolve_provider(settings.model, settings.base_url), extra, "estimate")
    return estimate_messages(settings, as_messages(prompt_or_messages, settings.system))


def usage(all_sessions: bool = False) -> pd.DataFrame:
    """The usage frame: one row per call, in call order.

    This session's calls; with ``all_sessions``, every call in the ledger file (``usage_db``) too.
    """
    return session.frame(all_sessions)
