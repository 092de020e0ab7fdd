"""What the model picker shows, as plain text (no ipywidgets): the models a search finds, the chosen model's
prices, context window and key, and the session's spend.

The picker (``ipyllm._widget``) only binds these to its widgets and to the configuration.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ipyllm._config import Settings
from ipyllm._cost import price
from ipyllm._display import format_cost
from ipyllm._litellm import check_environment, load_litellm, resolve_provider
from ipyllm._models import catalogue
from ipyllm._usage import UsageRow

__all__ = [
    "ModelInfo",
    "SpendTally",
    "describe_model",
    "info_html",
    "key_status",
    "matching",
    "model_choices",
    "provider_of",
    "typed_model",
]


# -- litellm's catalogue (shared with %llm_models, in ipyllm._models) ---------------------------------


def provider_of(model: str, base_url: str | None) -> str | None:
    """The catalogue's provider for ``model``, else the one litellm routes it to, else None."""
    return catalogue().provider_of.get(model) or resolve_provider(model, base_url)


def typed_model(text: str, provider: str | None) -> str | None:
    """The model name a typed text stands for: catalogue names and ``prefix/name`` as typed, else prefixed."""
    name = text.strip()
    if not name or any(c.isspace() for c in name):
        return None
    known = catalogue()
    if name in known.provider_of or "/" in name or provider is None or provider not in known.prefixes:
        return name
    return f"{provider}/{name}"


def matching(names: Iterable[str], search: str) -> list[str]:
    """Names containing every word of ``search`` (case-insensitive)."""
    words = search.lower().split()
    return [name for name in names if all(word in name.lower() for word in words)]


def model_choices(provider: str | None, search: str, current: str, base_url: str | None) -> list[tuple[str, str]]:
    """The picker's list, (label, model) pairs: the provider's chat models that match the search, a typed name first.

    The session's model (``current``) is listed under its provider even when the catalogue lacks it.
    """
    names = list(catalogue().chat_models.get(provider, ())) if provider is not None else []
    if provider_of(current, base_url) == provider and current not in names:
        names.insert(0, current)
    shown: list[tuple[str, str]] = [(name, name) for name in matching(names, search)]
    typed = typed_model(search, provider)
    if typed is not None and typed not in names:
        shown.insert(0, (f"{typed}  (as typed)", typed))
    return shown


# -- what the picker says about a model ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """Prices per million tokens (NaN: unknown), context window (None: unknown) and key availability."""

    model: str
    provider: str | None
    input_per_million: float
    output_per_million: float
    context_window: int | None
    key_available: bool
    key_note: str

    def summary(self) -> str:
        """Two lines: the model, its provider and context window; its prices per million tokens."""
        context = "unknown" if self.context_window is None else f"{self.context_window:,} tokens"
        return (
            f"{self.model} ({self.provider or 'provider unknown'}) · context window {context}\n"
            f"per 1M tokens: input {_per_million(self.input_per_million)} · output {_per_million(self.output_per_million)}"
        )


def _per_million(cost: float) -> str:
    return "unknown" if math.isnan(cost) else format_cost(cost)


def describe_model(settings: Settings) -> ModelInfo:
    """Prices, context window and key availability of ``settings.model``, from litellm's catalogue.

    Prices come from the same function that prices calls (so ``prices`` apply); nothing is guessed.
    """
    litellm = load_litellm()
    model = settings.model
    routed = resolve_provider(model, settings.base_url)
    provider = routed or catalogue().provider_of.get(model)
    context: int | None = None
    try:
        window = litellm.get_model_info(model, custom_llm_provider=routed).get("max_input_tokens")
        context = int(window) if isinstance(window, (int, float)) and window > 0 else None
    except Exception:
        context = None
    available, note = key_status(model, provider, settings)
    return ModelInfo(
        model=model,
        provider=provider,
        input_per_million=price(settings, model, routed, 1_000_000, 0),
        output_per_million=price(settings, model, routed, 0, 1_000_000),
        context_window=context,
        key_available=available,
        key_note=note,
    )


def key_status(model: str, provider: str | None, settings: Settings) -> tuple[bool, str]:
    """Whether a key is there for the model's provider: the session's own, or litellm's environment check."""
    if settings.api_key:
        return True, "key: set for this session (LLM_API_KEY, %llm_config or this picker)"
    check = check_environment(model)
    if check.in_environment:
        return True, f"key: found in the environment for {provider or 'this provider'}"
    if check.keyless:
        return True, "key: none needed (a local server)"
    wanted = " or ".join(["LLM_API_KEY", *check.missing[:2]])
    return False, f"key: none for {provider or 'this provider'}: set {wanted}, or type one below"


def info_html(info: ModelInfo) -> str:
    """The model's two summary lines and its key's state (green when a key is there, red when not)."""
    key_color = "#080" if info.key_available else "#b00"
    model, prices = (html.escape(line) for line in info.summary().splitlines())
    key = f"<span style='color:{key_color}'>{html.escape(info.key_note)}</span>"
    return f"<div style='line-height:1.45'>{model}<br>{prices}<br>{key}</div>"


# -- the session's spend -------------------------------------------------------------------------------


class SpendTally:
    """The session's calls, tokens and cost, counted row by row (rows come from worker threads too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = self._tokens = self._unpriced = 0
        self._cost = 0.0

    def count(self, row: UsageRow) -> None:
        with self._lock:
            self._calls += 1
            self._tokens += row.total_tokens or 0
            if math.isnan(row.cost_usd):
                self._unpriced += row.prompt_tokens is not None
            else:
                self._cost += row.cost_usd

    def text(self, budget_usd: float | None, user: str, today: tuple[float, float] | None) -> str:
        """``Session spend: 3 calls · 120 tokens · $0.00012 of $2.00 budget``, and today's team spend on a team ledger."""
        with self._lock:
            calls, tokens, cost, unpriced = self._calls, self._tokens, self._cost, self._unpriced
        text = f"Session spend: {calls:,} call{'s' if calls != 1 else ''} · {tokens:,} tokens · {format_cost(cost)}"
        if unpriced:
            text += f" + {unpriced} call{'s' if unpriced != 1 else ''} of unknown price"
        if budget_usd is not None:
            text += f" of {format_cost(budget_usd)} budget"
        if today is not None:  # a team ledger: everyone's spend today, and this user's
            text += f" · today: team {format_cost(today[0])}, {user} {format_cost(today[1])}"
        return text
