"""Prompt caching: which providers cache how, the shortest prefix each caches, the plan a map decides once for its
calls (a ``cache_control`` marker on its shared prefix, or a ``prompt_cache_key``), and what a map is expected to
cost with its cache hits.

Providers differ (docs/batches.md, "Prompt caching"):

- **OpenAI and Azure OpenAI** cache on their own every prompt prefix of 1,024 tokens or more, in 128-token steps,
  read at their cached rate (half the input price for gpt-4o-mini) and written at no extra cost.
  ``prompt_cache_key`` routes requests that share a prefix to the same cache, so a map sends one (a hash of its
  shared prefix) where litellm says the model takes it. Other providers that cache on their own (DeepSeek, xAI,
  ...) are asked nothing.
- **Anthropic** (and Claude on Bedrock or Vertex AI) and **Gemini** cache only what a ``cache_control`` marker
  closes: the first request writes the prefix (1.25x the input price), later ones read it (0.1x). A map marks its
  shared prefix, exactly once, when it is at least the model's minimum (litellm's map, else the documented 1,024
  tokens, 2,048 for Haiku, 4,096 for Gemini) and the reads pay for the write. Gemini caches whole messages, so there
  the shared text is a message of its own; elsewhere it is the first content block of the row's message.

The plan changes only how the call is billed, never what it says: the text sent is the same, so the ledger's cache
key (``_calls.cache_key``) does not cover the marker or the key, and a row answered once is answered from the cache
whichever map it is in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ipyllm._config import Settings
from ipyllm._cost import count_tokens
from ipyllm._litellm import prompt_cache_minimum, provider_parameters, resolve_provider, supports_prompt_caching
from ipyllm._pricemap import model_prices
from ipyllm._pricemap import rate as price_rate

__all__ = ["EPHEMERAL", "CacheEstimate", "CachePlan", "Policy", "Rates", "estimate_cache_hits", "plan_prompt_cache", "policy", "rates"]

#: The marker: Anthropic's default 5-minute cache.
EPHEMERAL = {"type": "ephemeral"}
#: Providers (as litellm resolves them) that cache only what a ``cache_control`` marker closes.
_MARKED = frozenset({"anthropic", "bedrock", "bedrock_converse", "vertex_ai", "vertex_ai_beta", "gemini"})
#: Providers that cache on their own and take a ``prompt_cache_key``.
_KEYED = frozenset({"openai", "azure"})
#: OpenAI's cache hits come in steps of this many tokens.
OPENAI_STEP = 128
#: The cache-write price against the input price, where litellm's map has none (Anthropic's 5-minute cache).
WRITE_PREMIUM = 1.25
#: The cache-read price against the input price, where litellm's map has none, for a marked provider (Anthropic's).
READ_DISCOUNT = 0.1


@dataclass(frozen=True)
class Policy:
    """How a model caches prompts: ``style`` ``marker`` (only what ``cache_control`` closes), ``key`` (on its own,
    steered by ``prompt_cache_key``), ``automatic`` (on its own) or None (not at all, as far as litellm knows); the
    shortest prefix cached; whether the marker must close a whole message (Gemini)."""

    style: str | None
    minimum: int
    whole_message: bool = False


def policy(model: str, provider: str | None) -> Policy:
    """The model's caching policy, from litellm's model map and the providers' documented minimums."""
    name = model.lower()
    known = prompt_cache_minimum(model, provider)
    minimum = known or (4096 if "gemini" in name else 2048 if "haiku" in name else 1024)
    if not supports_prompt_caching(model, provider):
        return Policy(None, minimum)
    if provider in _MARKED:
        return Policy("marker", minimum, whole_message="gemini" in name)
    if provider in _KEYED and "prompt_cache_key" in provider_parameters("chat", model, provider):
        return Policy("key", minimum)
    return Policy("automatic", minimum)


@dataclass(frozen=True)
class Rates:
    """USD per token: input, output, a cache read and a cache write (``*_known``: litellm's map says, not assumed)."""

    input: float
    output: float
    read: float
    write: float
    read_known: bool = True
    write_known: bool = True


def rates(model: str, rule: Policy, prices: Mapping[str, Any] | None = None) -> Rates | None:
    """The model's rates from litellm's price map (after the session's ``prices``); None when it has no price.

    A provider that caches on its own writes at the input price; a marked one at its ``cache_creation`` price, else
    ``WRITE_PREMIUM`` times the input price. A read without a price in the map is at the input price (no discount
    assumed), but for a marked provider, at Anthropic's documented ``READ_DISCOUNT``.
    """
    entry = model_prices(model, prices)
    given, out, read, write = (
        price_rate(entry, name)
        for name in ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost", "cache_creation_input_token_cost")
    )
    if given is None or out is None:
        return None
    marked = rule.style == "marker"
    read_as = read if read is not None else given * (READ_DISCOUNT if marked else 1.0)
    if not marked:
        return Rates(given, out, read_as, given, read is not None)
    return Rates(given, out, read_as, write if write is not None else given * WRITE_PREMIUM, read is not None, write is not None)


def pays(rule: Policy, prefix_tokens: int, rows: int, rate: Rates | None) -> bool:
    """Whether asking for the cache saves more than it costs: a caching model, a prefix of at least its minimum, and
    more than one row; with a marker, the reads of the later rows must save more than the first row's write costs."""
    if rule.style is None or rows < 2 or prefix_tokens < rule.minimum:
        return False
    if rule.style != "marker":
        return True
    premium, discount = (rate.write - rate.input, rate.input - rate.read) if rate is not None else (WRITE_PREMIUM - 1, 1 - READ_DISCOUNT)
    return (rows - 1) * discount > premium


@dataclass(frozen=True)
class CachePlan:
    """A map's prompt caching, decided once for all its rows: the style, the shared prefix (``text``, the template's
    constant text the row's message begins with; empty when only the system message is shared) and its tokens, and
    the ``prompt_cache_key`` (``key`` style)."""

    style: str
    prefix_tokens: int
    minimum: int
    text: str = ""
    key: str | None = None
    whole_message: bool = False

    def apply(self, kwargs: dict[str, Any]) -> None:
        """Add the plan to a call's litellm arguments: the key (unless the caller gave one), or the marker."""
        if self.key is not None:
            kwargs.setdefault("prompt_cache_key", self.key)
        if self.style == "marker":
            kwargs["messages"] = self.marked(kwargs["messages"])

    def marked(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with one ``cache_control`` marker closing the shared prefix (a new list; the given one is kept
        as it is). Messages that carry a marker already are sent as they are: the caller's own markers stand."""
        if any(_has_marker(message) for message in messages):
            return messages
        marked = list(messages)
        system = None
        for position, message in enumerate(marked):
            role, content = message.get("role"), message.get("content")
            if role == "system":
                system = position
                continue
            if self.text and role == "user" and isinstance(content, str) and content.startswith(self.text):
                rest = content[len(self.text) :]
                head = {"type": "text", "text": self.text, "cache_control": dict(EPHEMERAL)}
                if self.whole_message:  # Gemini caches whole messages: the row's part is a message of its own
                    marked[position : position + 1] = [{**message, "content": [head]}] + (
                        [{**message, "content": rest}] if rest.strip() else []
                    )
                else:
                    marked[position] = {**message, "content": [head] + ([{"type": "text", "text": rest}] if rest.strip() else [])}
                return marked
            break
        if not self.text and system is not None and isinstance(marked[system].get("content"), str) and marked[system]["content"]:
            text = marked[system]["content"]
            marked[system] = {**marked[system], "content": [{"type": "text", "text": text, "cache_control": dict(EPHEMERAL)}]}
            return marked
        return messages


def _has_marker(message: dict[str, Any]) -> bool:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    return "cache_control" in message or any(isinstance(block, dict) and "cache_control" in block for block in blocks)


def shared_messages(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """What every row of a map sends first: its leading system messages and, when the template begins with constant
    text, the row's message cut there; empty when the rows share nothing known."""
    shared: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "system":
            shared.append(message)
            continue
        content = message.get("content")
        if text and message.get("role") == "user" and isinstance(content, str) and content.startswith(text):
            shared.append({**message, "content": text})
        break
    return shared


def plan_prompt_cache(
    settings: Settings, messages: list[dict[str, Any]], text: str, rows: int, prices: Mapping[str, Any] | None = None
) -> CachePlan | None:
    """The plan for a map of ``rows`` rows whose first row sends ``messages`` and whose template begins with ``text``;
    None where caching would not pay (a model that does not cache, a prefix under its minimum, one row)."""
    if rows < 2:
        return None
    shared = shared_messages(messages, text)
    if not shared:
        return None  # rows that share nothing: nothing to ask litellm's model map
    model = settings.model
    rule = policy(model, resolve_provider(model, settings.base_url))
    if rule.style is None:
        return None
    tokens = count_tokens(model, shared)
    if not pays(rule, tokens, rows, rates(model, rule, prices)):
        return None
    text = shared[-1]["content"] if shared[-1].get("role") == "user" else ""
    key = None
    if rule.style == "key":
        material = json.dumps({"model": model, "shared": shared}, sort_keys=True, default=str)
        key = "ipyllm-" + hashlib.sha256(material.encode()).hexdigest()[:32]
    return CachePlan(rule.style or "", tokens, rule.minimum, text, key, rule.whole_message)


# -- what a map costs with its cache hits -------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEstimate:
    """A map's expected live cost with its cache hits, against list price (every token at the normal rates).

    Prompt tokens are split into ``plain_tokens`` (input price), ``read_tokens`` (cache-read price) and
    ``write_tokens`` (cache-write price); ``assumptions`` says what the figures take for granted. USD figures are
    NaN when the model has no price.
    """

    model: str
    provider: str | None
    style: str | None
    rows: int
    prefix_tokens: int
    prompt_tokens: int
    output_tokens: int
    plain_tokens: int
    read_tokens: int
    write_tokens: int
    list_usd: float
    cached_usd: float
    assumptions: tuple[str, ...]

    @property
    def saved_usd(self) -> float:
        return self.list_usd - self.cached_usd

    def __str__(self) -> str:
        money = "price unknown" if math.isnan(self.cached_usd) else f"${self.cached_usd:.4g} (list ${self.list_usd:.4g})"
        return (
            f"live with cache hits: {money} · {self.prompt_tokens:,} prompt tokens ({self.read_tokens:,} read from the cache, "
            f"{self.write_tokens:,} written) · " + "; ".join(self.assumptions)
        )


def estimate_cache_hits(
    model: str,
    provider: str | None,
    prefix_tokens: int,
    row_tokens: int | Sequence[int],
    rows: int,
    output_tokens: int = 0,
    *,
    prices: Mapping[str, Any] | None = None,
) -> CacheEstimate:
    """What ``rows`` live calls sharing a prefix of ``prefix_tokens`` cost with the expected cache hits.

    ``row_tokens`` is each row's own prompt tokens after the prefix (one figure for every row, or one per row);
    ``output_tokens`` each row's output. The first row writes the cache and the others read it, as the provider
    prices them: OpenAI-style providers read the prefix in 128-token steps and write at no extra cost; marked ones
    read all of it and write it at the cache-write price. No hit where caching would not pay (see ``pays``).
    """
    rule = policy(model, provider)
    rate = rates(model, rule, prices)
    own = [int(row_tokens)] * rows if isinstance(row_tokens, int) else [int(tokens) for tokens in row_tokens]
    if len(own) != rows:
        raise ValueError(f"row_tokens has {len(own)} figures for {rows} rows")
    prompt = rows * prefix_tokens + sum(own)
    output = rows * output_tokens
    said: list[str] = []
    read = write = 0
    if pays(rule, prefix_tokens, rows, rate):
        said.append(f"the first row is sent alone and writes the cache; the other {rows - 1:,} read it, all within the cache's 5 minutes")
        if rule.style == "marker":
            write, read = prefix_tokens, prefix_tokens * (rows - 1)
            said.append(f"one cache_control marker closes the {prefix_tokens:,}-token shared prefix")
        else:
            step = prefix_tokens // OPENAI_STEP * OPENAI_STEP
            read = step * (rows - 1)
            said.append(
                f"the provider caches on its own in {OPENAI_STEP}-token steps: {step:,} of the {prefix_tokens:,} shared tokens read per row"
            )
    elif rule.style is None:
        said.append(f"{model} does not cache prompts, as far as litellm's map says")
    elif rows < 2:
        said.append("one row: nothing to read from a cache")
    elif prefix_tokens < rule.minimum:
        said.append(f"the shared prefix of {prefix_tokens:,} tokens is under {model}'s minimum of {rule.minimum:,}: not cached")
    else:
        said.append("too few rows for the cache reads to pay for the cache write: not marked")
    if rate is None:
        said.append(f"{model} has no price in litellm's map")
        listed = cached = math.nan
    else:
        if read and not rate.read_known:
            said.append(f"no cache-read price in litellm's map: reads at {rate.read / rate.input:g}x the input price")
        if write and not rate.write_known:
            said.append(f"no cache-write price in litellm's map: writes at {WRITE_PREMIUM:g}x the input price")
        listed = prompt * rate.input + output * rate.output
        cached = (prompt - read - write) * rate.input + read * rate.read + write * rate.write + output * rate.output
    plain = prompt - read - write
    return CacheEstimate(model, provider, rule.style, rows, prefix_tokens, prompt, output, plain, read, write, listed, cached, tuple(said))
