"""The one cached-call path: a call prepared once, its cache key, its answer from the cache, what of its result is
kept for the next time, and what it may cost. ``complete``, ``acomplete``, ``embed`` and every row of ``map`` go
through it, so the three cannot drift apart.

The cache key covers everything that was sent: the kind, the model (and Azure deployment), every message as
sent (the system prompt and a schema's instruction included), the sampling settings, the endpoint and every
extra parameter (``response_format`` included). A hit needs no litellm (its import takes seconds): the entry
carries its provider.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ipyllm._budget import Need, Reservation, usd
from ipyllm._config import Settings
from ipyllm._cost import estimate, estimate_embedding
from ipyllm._engine import Embeddings, Reply
from ipyllm._litellm import litellm_loaded, load_litellm, resolve_provider
from ipyllm._notices import notice
from ipyllm._schema import Schema
from ipyllm._usage import UsageRow
from ipyllm.errors import Interrupted, InvalidOutputError

__all__ = ["Prepared", "cache_key", "chat_need", "cut_by_budget", "cut_message", "wait_for_litellm"]


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

    @property
    def model(self) -> str:
        return self.settings.model if self.kind == "chat" else self.settings.embedding_model

    def need(self) -> Need:
        """What the call may cost, for the budgets."""
        if self.kind == "chat":
            return chat_need(self.settings, self.payload, self.extra)
        return Need(estimate_embedding(self.settings, self.payload), output=False)

    # -- the cache -------------------------------------------------------------------------------------------
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
        return {
            "text": result.text,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "provider": row.provider,
        }

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
