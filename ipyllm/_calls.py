"""The one cached-call path: a call prepared once (its input checked, its settings split from litellm's extra
arguments), its cache key, its answer from the cache, what of its result is kept for the next time, and what it
may cost. ``complete``, ``acomplete``, ``embed`` and every row of ``map`` go through it, so they cannot drift
apart: no other module keys, reads or writes the cache.

The cache key covers everything that was sent: the kind, the model (and Azure deployment), every message as
sent (the system prompt and a schema's instruction included), the sampling settings, the endpoint and every
extra parameter (``response_format`` included). A hit needs no litellm (its import takes seconds): the entry
carries its provider.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ipyllm._attach import attach, prepare_media
from ipyllm._budget import Need, Reservation, usd
from ipyllm._config import SETTING_NAMES, LLMConfig, Settings
from ipyllm._cost import Estimate, estimate, estimate_embedding
from ipyllm._engine import Embeddings, Reply, as_messages
from ipyllm._litellm import litellm_loaded, load_litellm, resolve_provider
from ipyllm._notices import notice
from ipyllm._parts import count_images
from ipyllm._records import Records
from ipyllm._schema import Schema
from ipyllm._usage import UsageRow
from ipyllm._validate import check_encodable, check_keywords, check_prompt, check_texts
from ipyllm.errors import Interrupted, InvalidOutputError, SettingError

__all__ = [
    "Prepared",
    "answer_entry",
    "cache_key",
    "cached_entries",
    "chat_need",
    "cut_by_budget",
    "cut_message",
    "estimate_chat",
    "prepare_chat",
    "prepare_embedding",
    "split_overrides",
    "wait_for_litellm",
]

# Arguments ipyllm sets itself: passing them would let litellm or the OpenAI SDK retry beneath our policy.
_RESERVED = {"max_retries": "num_retries", "stream_options": "stream", "messages": "prompt_or_messages"}


def split_overrides(config: LLMConfig, overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """Per-call settings (validated like any setting) and the rest, passed to litellm as is."""
    for name, instead in _RESERVED.items():
        if name in overrides:
            raise SettingError(f"{name} is set by ipyllm: use {instead} instead", name)
    known = {k: v for k, v in overrides.items() if k in SETTING_NAMES}
    extra = {k: v for k, v in overrides.items() if k not in SETTING_NAMES}
    return config.snapshot(**known), extra


# -- preparing a call --------------------------------------------------------------------------------------------
def prepare_chat(
    config: LLMConfig,
    prompt_or_messages: str | Sequence[dict[str, Any]],
    overrides: dict[str, Any],
    record: Callable[..., None],
    *,
    use_cache: bool = True,
    schema: Any = None,
    caller: str = "complete",
    images: Any = None,
    files: Any = None,
) -> Prepared:
    """Check the input (nothing is sent, and no row written, for bad input), apply the schema, key the cache.

    ``images`` and ``files`` join the last user message (``_attach``); a call with images or files is checked for
    them before anything else happens (the model takes them, each image fits the provider's limits)."""
    started = time.perf_counter()
    settings, extra = split_overrides(config, overrides)
    check_prompt(prompt_or_messages)
    prompt_or_messages = attach(prompt_or_messages, images, files)
    messages = prepare_media(settings, as_messages(prompt_or_messages, settings.system))
    check_encodable(messages)
    if extra:  # resolving the provider needs litellm, which a cache hit must not wait for
        check_keywords("chat", settings.model, resolve_provider(settings.model, settings.base_url), extra, caller)
    shape = Schema.of(schema) if schema is not None else None
    if shape is not None:
        messages, extra = shape.request(settings, messages, extra)
    return Prepared.of("chat", settings, messages, extra, record, keyed=settings.cache and use_cache, started=started, shape=shape)


def prepare_embedding(config: LLMConfig, texts: str | Sequence[str], overrides: dict[str, Any], record: Callable[..., None]) -> Prepared:
    """``prepare_chat`` for texts to embed (``model=`` is taken for ``embedding_model=``)."""
    started = time.perf_counter()
    if "model" in overrides:
        overrides["embedding_model"] = overrides.pop("model")
    settings, extra = split_overrides(config, overrides)
    items = check_texts(texts)
    if extra:
        check_keywords("embedding", settings.embedding_model, resolve_provider(settings.embedding_model, settings.base_url), extra, "embed")
    return Prepared.of("embedding", settings, items, extra, record, keyed=settings.cache, started=started)


def estimate_chat(
    config: LLMConfig,
    prompt_or_messages: str | Sequence[dict[str, Any]],
    overrides: dict[str, Any],
    images: Any = None,
    files: Any = None,
) -> Estimate:
    """What the chat call would cost: its input checked as ``complete`` checks it (images and files too), nothing sent."""
    settings, extra = split_overrides(config, overrides)
    check_prompt(prompt_or_messages)
    prompt_or_messages = attach(prompt_or_messages, images, files)
    messages = prepare_media(settings, as_messages(prompt_or_messages, settings.system))
    if extra:  # a keyword complete would refuse is refused here too, rather than left out of the estimate
        check_keywords("chat", settings.model, resolve_provider(settings.model, settings.base_url), extra, "estimate")
    return estimate(settings, messages)


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


@dataclass
class Prepared:
    """One call, prepared: what is sent (``payload``: messages, or texts to embed), its settings and extra
    arguments (a schema applied), its cache key (None: not cached), where its row goes, and when it started."""

    kind: str
    settings: Settings
    payload: list[Any]
    extra: dict[str, Any]
    key: str | None
    record: Callable[..., None]
    started: float
    shape: Schema | None = None

    @classmethod
    def of(
        cls,
        kind: str,
        settings: Settings,
        payload: list[Any],
        extra: dict[str, Any],
        record: Callable[..., None],
        *,
        keyed: bool,
        started: float | None = None,
        shape: Schema | None = None,
    ) -> Prepared:
        """The call, keyed for the cache when ``keyed`` (read or written, with ``cache`` on or by a map's resume)."""
        key = cache_key(kind, settings, payload, extra) if keyed else None
        if kind == "chat":
            record = _with_images(record, count_images(payload))
        return cls(kind, settings, payload, extra, key, record, time.perf_counter() if started is None else started, shape)

    @property
    def model(self) -> str:
        return self.settings.model if self.kind == "chat" else self.settings.embedding_model

    def need(self) -> Need:
        """What the call may cost, for the budgets."""
        if self.kind == "chat":
            return chat_need(self.settings, self.payload, self.extra)
        return Need(estimate_embedding(self.settings, self.payload), output=False)

    # -- the cache -------------------------------------------------------------------------------------------
    def cached(self, records: Records, on_text: Callable[[str], Any] | None = None) -> Reply | Embeddings | None:
        """The call's answer from the cache (a ``cached`` row), or None."""
        if self.key is None:
            return None
        return self.from_cache(records.cache_get(self.key), on_text)

    def keep(self, result: Reply | Embeddings, put: Callable[[str, str, str, dict[str, Any]], Any]) -> None:
        """Keep what of the result the cache keeps, with ``put`` (the records' ``cache_put``, or a batch's writer)."""
        entry = self.entry(result) if self.key is not None else None
        if self.key is not None and entry is not None:
            put(self.key, self.kind, self.model, entry)

    def from_cache(self, hit: dict[str, Any] | None, on_text: Callable[[str], Any] | None = None) -> Reply | Embeddings | None:
        """The cached answer, recorded as a ``cached`` row (cost 0); None for a miss, or an entry that holds no
        answer (an empty one an earlier version kept)."""
        answer = hit.get("text") if self.kind == "chat" and hit is not None else hit.get("vectors") if hit is not None else None
        if not answer or hit is None:
            return None
        row = self.cached_row(hit)
        self.record(row)
        if self.kind == "embedding":
            return Embeddings(answer, row)
        if on_text is not None:
            on_text(answer)
        return Reply(answer, row, self.payload)

    def cached_row(self, hit: dict[str, Any]) -> UsageRow:
        """The row of a call answered from the cache: without litellm (the entry carries its provider; an entry
        written before it did is resolved through litellm)."""
        prompt, completion = hit.get("prompt_tokens"), hit.get("completion_tokens")
        provider = hit["provider"] if "provider" in hit else resolve_provider(self.model, self.settings.base_url)
        return UsageRow(
            kind=self.kind,
            model=self.model,
            provider=provider,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=None if prompt is None else prompt + (completion or 0),
            cost_usd=0.0,
            latency_s=time.perf_counter() - self.started,
            attempts=0,
            status="cached",
        )

    def entry(self, result: Reply | Embeddings) -> dict[str, Any] | None:
        """What of a result is kept in the cache, or None when nothing is: an empty reply (asked again, the model
        may well answer) or one a budget's cap cut short (with more budget, the same request gets the whole one)."""
        row = result.usage
        if isinstance(result, Embeddings):
            return {"vectors": list(result), "prompt_tokens": row.prompt_tokens, "completion_tokens": 0, "provider": row.provider}
        if not result.text or result.cut:
            return None
        return answer_entry(result.text, row)

    # -- a chat's reply ------------------------------------------------------------------------------------------
    def finish(self, reply: Reply, reservation: Reservation | None = None) -> Reply:
        """Parse the reply against the schema (``InvalidOutputError`` if it does not fit, with the call's row), and say
        in one line what is worth saying: a reply a budget's cap cut short, or an empty one."""
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
        elif reply.note and reply.usage.status != "cached":
            notice(reply.note)
        return reply

    def wait_for_litellm(self, on_loading: Callable[[], Any] | None) -> None:
        """Wait for litellm's import (``on_loading`` is told first); Ctrl-C meanwhile records an ``interrupted`` row."""
        try:
            wait_for_litellm(on_loading)
        except Interrupted as interrupted:
            # Nothing was sent; the row still says the call was made and stopped.
            interrupted.usage = UsageRow(
                kind=self.kind,
                model=self.model,
                cost_usd=0.0,
                latency_s=time.perf_counter() - self.started,
                attempts=0,
                status="interrupted",
                error=f"KeyboardInterrupt: {interrupted.message}",
            )
            self.record(interrupted.usage)
            raise


def _with_images(record: Callable[..., None], images: int) -> Callable[..., None]:
    """``record`` for a chat call: each of its rows says how many images it sends (the ``images`` column, 0 for text)."""

    def recorded(row: UsageRow, *args: Any, **kwargs: Any) -> None:
        row.images = images
        record(row, *args, **kwargs)

    return recorded


def answer_entry(text: str, row: UsageRow) -> dict[str, Any]:
    """A chat answer as the cache keeps it (the entry carries its provider, so a hit needs no litellm)."""
    return {"text": text, "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens, "provider": row.provider}


def cached_entries(calls: Iterable[Prepared | None], records: Records) -> dict[str, dict[str, Any]]:
    """The cache's entries for many prepared calls (``from_cache`` answers each), in one query."""
    keys = [call.key for call in calls if call is not None and call.key is not None]
    return records.cache_get_many(keys) if keys else {}


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


def chat_need(settings: Settings, messages: list[dict[str, Any]], extra: dict[str, Any]) -> Need:
    """What a chat call may cost, for the budgets: its prompt counted and priced, the output price per token, and
    the most output it may bill (the user's ``max_tokens`` or ``max_completion_tokens``, else the model's maximum)."""
    guess = estimate(settings, messages)
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
