"""What calls cost: the usage a response reports, the provider's own figure, litellm's prices, estimates.

A finished call is priced from what the provider reported about it: the cost a proxy or the provider states
(``x-litellm-response-cost``, ``usage.cost``), else the whole usage at litellm's prices (cached, reasoning
and audio tokens at their rates), with the session's ``prices`` first; NaN where nothing is known, never a
made-up 0. Before sending, ``estimate`` counts the prompt and bounds the output. Knows nothing of retries,
pandas or IPython; litellm is imported through the client's ``load_litellm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ipyllm._config import Settings
from ipyllm._display import format_cost
from ipyllm._litellm import hidden_params, load_litellm, max_output_tokens, resolve_provider
from ipyllm._pricemap import session_price

__all__ = [
    "UNKNOWN_MAX_OUTPUT",
    "Estimate",
    "cache_creation_tokens",
    "cached_tokens",
    "call_cost",
    "count_tokens",
    "custom_price",
    "estimate",
    "estimate_embedding",
    "max_output",
    "price",
    "provider_usage",
    "reported_cost",
    "usage_field",
    "usage_object",
]

Messages = list[dict[str, Any]]


_ABSENT = object()

#: Where litellm keeps a proxy's own figure for the call (``x-litellm-response-cost``), among the response headers.
_COST_HEADERS = ("llm_provider-x-litellm-response-cost", "x-litellm-response-cost")


def usage_field(usage: Any, name: str) -> Any:
    """``usage[name]`` or ``usage.name``, None when absent."""
    if usage is None:
        return None
    if isinstance(usage, dict):
        return usage.get(name)
    extra: Any = getattr(usage, "__pydantic_extra__", _ABSENT)
    if extra is not _ABSENT:
        # litellm's pydantic objects: fields and extras read directly (getattr takes microseconds, and a
        # missing name costs it an exception).
        value = usage.__dict__.get(name)
        return extra.get(name) if value is None and extra else value
    return getattr(usage, name, None)


def provider_usage(received: Any, yielded: list[Any]) -> Any:
    """The last usage among a stream's chunks as the provider sent them (litellm keeps them on its stream
    wrapper); the yielded chunks when the stream is not litellm's (a test's stand-in)."""
    for chunk in reversed(received if isinstance(received, list) else yielded):
        usage = usage_field(chunk, "usage")
        if usage is not None:
            return usage
    return None


def cached_tokens(usage: Any) -> int | None:
    """Prompt tokens the provider served from its prompt cache, as reported (OpenAI's and litellm's
    ``prompt_tokens_details.cached_tokens``, Anthropic's ``cache_read_input_tokens``); None when not reported."""
    value = usage_field(usage_field(usage, "prompt_tokens_details"), "cached_tokens")
    if value is None:
        value = usage_field(usage, "cache_read_input_tokens")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def cache_creation_tokens(usage: Any) -> int | None:
    """Prompt tokens written to the provider's prompt cache, as reported (Anthropic's and litellm's
    ``cache_creation_input_tokens``); None when not reported."""
    value = usage_field(usage, "cache_creation_input_tokens")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _amount(value: Any) -> float | None:
    if isinstance(value, dict):  # a breakdown, as some providers send
        value = value.get("total_cost")
    if isinstance(value, bool) or value is None:
        return None
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


def reported_cost(response: Any, usage: Any) -> float | None:
    """The call's cost as a proxy (``x-litellm-response-cost``) or the provider (``usage.cost``, as OpenRouter) reported it."""
    headers = hidden_params(response).get("additional_headers") or {}
    for value in (*(headers.get(name) for name in _COST_HEADERS), usage_field(usage, "cost")):
        amount = _amount(value)
        if amount is not None:
            return amount
    return None


def call_cost(
    settings: Settings,
    model: str,
    provider: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    kind: str = "chat",
    usage: Any = None,
    response: Any = None,
) -> float:
    """What a finished call cost: the provider's or proxy's own figure when it reported one, else the price of
    the whole usage (cached, cache-creation, reasoning and audio tokens at their rates; ``prices`` first);
    NaN when unknown. ``usage`` is None when the tokens were counted locally."""
    amount = reported_cost(response, usage)
    if amount is not None:
        return amount
    if usage is not None and custom_price(settings, model) is None:
        # litellm priced the response from its whole usage while returning it (``response_cost``): the same
        # price ``cost_per_token`` gives, at no further cost. Zero is not trusted: it is also litellm's answer
        # for a model it cannot price.
        amount = _amount(hidden_params(response).get("response_cost"))
        if amount:
            return amount
    return price(settings, model, provider, prompt_tokens, completion_tokens, kind, usage)


#: The most output tokens a call is taken to bill when neither ``max_tokens`` nor the model's own maximum
#: output is known (a local model with ``prices``): what a dry run bounds and a budget caps at.
UNKNOWN_MAX_OUTPUT = 32_768


@dataclass(frozen=True, repr=False)
class Estimate:
    """What a chat call would cost before it is sent: the prompt's tokens and prices per token.

    ``output_tokens`` is the most output the call may bill: ``max_tokens``, else the model's own maximum output
    (``model_max_output``, from litellm's model map), else ``UNKNOWN_MAX_OUTPUT``. Costs are NaN where the
    model has no known price.
    """

    model: str
    provider: str | None
    prompt_tokens: int
    input_cost: float
    output_cost_per_token: float
    max_tokens: int | None
    model_max_output: int | None = None

    @property
    def output_tokens(self) -> int:
        """The most output tokens the call may bill: ``max_tokens``, else the model's maximum output."""
        return self.max_tokens or self.model_max_output or UNKNOWN_MAX_OUTPUT

    @property
    def max_output_cost(self) -> float:
        return self.output_cost_per_token * self.output_tokens

    @property
    def total(self) -> float:
        """The most the call may cost: the input plus ``output_tokens`` at the output price."""
        return self.input_cost + self.max_output_cost

    def upper_bound(self) -> float:
        """The most the call may cost (``total``); NaN if unpriced."""
        return self.total

    def describe(self) -> str:
        """``input $0.0000091 (61 tokens) · output $0.60 per 1M tokens, at most $0.0098 for 16,384 tokens (the model's
        maximum; max_tokens unset)``."""
        if math.isnan(self.input_cost):
            text = f"input price unknown ({self.prompt_tokens:,} tokens)"
        else:
            text = f"input {format_cost(self.input_cost)} ({self.prompt_tokens:,} tokens)"
        if math.isnan(self.output_cost_per_token):
            return f"{text} · output price unknown"
        if self.max_tokens:
            where = "max_tokens"
        elif self.model_max_output:
            where = "the model's maximum; max_tokens unset"
        else:
            where = "max_tokens unset, the model's maximum unknown"
        return (
            f"{text} · output {format_cost(self.output_cost_per_token * 1e6)} per 1M tokens, "
            f"at most {format_cost(self.max_output_cost)} for {self.output_tokens:,} tokens ({where})"
        )

    def __repr__(self) -> str:
        total = "" if math.isnan(self.total) else f" · at most {format_cost(self.total)} in all"
        return f"Estimate({self.model} ({self.provider or 'provider unknown'}): {self.describe()}{total})"


def estimate(settings: Settings, messages: Messages) -> Estimate:
    """Count the prompt's tokens with litellm's ``token_counter`` and price them; NaN where unknown."""
    provider = resolve_provider(settings.model, settings.base_url)
    tokens = count_tokens(settings.model, messages)
    return Estimate(
        model=settings.model,
        provider=provider,
        prompt_tokens=tokens,
        input_cost=price(settings, settings.model, provider, tokens, 0),
        output_cost_per_token=price(settings, settings.model, provider, 0, 1),
        max_tokens=settings.max_tokens,
        model_max_output=max_output(settings, settings.model, provider),
    )


def count_tokens(model: str, messages: Messages) -> int:
    """The messages' tokens as litellm's ``token_counter`` counts them for ``model`` (its default tokenizer for a
    model it does not know)."""
    litellm = load_litellm()
    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:
        return int(litellm.token_counter(messages=messages))


def max_output(settings: Settings, model: str, provider: str | None) -> int | None:
    """The model's own maximum output tokens, from litellm's model map (for a ``prices`` alias, the alias's);
    None when unknown."""
    custom = custom_price(settings, model)
    if isinstance(custom, dict):
        return None
    return max_output_tokens(custom, None) if isinstance(custom, str) else max_output_tokens(model, provider)


def estimate_embedding(settings: Settings, texts: list[str]) -> float:
    """What embedding ``texts`` would cost (NaN when the price is unknown)."""
    litellm = load_litellm()
    model = settings.embedding_model
    target = f"azure/{settings.embedding_deployment}" if settings.embedding_deployment else model
    tokens = sum(int(litellm.token_counter(model=model, text=text)) for text in texts)
    return price(settings, model, resolve_provider(target, settings.base_url), tokens, 0, "embedding")


def custom_price(settings: Settings, model: str) -> str | dict[str, float] | None:
    """The session's ``prices`` for ``model`` (also without its ``provider/`` prefix): a base model, per-token prices
    (without the capability flags), or None (also for an entry of flags alone)."""
    return session_price(model, settings.prices)


def usage_object(usage: Any) -> dict[str, Any]:
    """``{"usage_object": ...}`` for litellm's ``cost_per_token`` (which then prices cached, cache-creation, reasoning
    and audio tokens at their own rates); empty when the usage does not convert (priced from the counts alone)."""
    litellm = load_litellm()
    try:
        return {"usage_object": usage if isinstance(usage, litellm.Usage) else litellm.Usage(**dict(usage))}
    except Exception:
        return {}


def price(
    settings: Settings, model: str, provider: str | None, prompt_tokens: int, completion_tokens: int, kind: str = "chat", usage: Any = None
) -> float:
    """USD for these tokens from litellm's price map or the session's ``prices``; NaN when unknown.

    With ``usage`` (what the provider reported), litellm prices all of it: cached and cache-creation prompt
    tokens, reasoning and audio tokens at their own rates.
    """
    litellm = load_litellm()
    custom = custom_price(settings, model)
    arguments: dict[str, Any] = {"model": model, "custom_llm_provider": provider}
    if isinstance(custom, str):
        arguments = {"model": custom}
    elif isinstance(custom, dict):
        # Per-token prices know no cached rate (and litellm drops the output side when given a usage object).
        arguments["custom_cost_per_token"] = custom
        usage = None
    if usage is not None and kind == "chat":
        arguments.update(usage_object(usage))
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            call_type="embedding" if kind == "embedding" else "completion",
            **arguments,
        )
    except Exception:
        return math.nan
    return float(prompt_cost) + float(completion_cost)
