"""What a batch costs: the provider's Batch API price of tokens, for one usage (``batch_price``, litellm's own batch
cost calculator) or for many rows of one model (``BatchPricer``: the model's batch rates made once, then tokens times
rates; litellm one row at a time only where the rates cannot express the price).

The price rests on litellm's ``*_cost_per_token_batches`` rates, else half the live price where the provider documents
50 % (``HALF_PRICE_BATCH_PROVIDERS``), else the live price; ``BATCH_BASES`` says which.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ipyllm._config import Settings
from ipyllm._cost import custom_price, price, usage_object
from ipyllm._litellm import load_litellm
from ipyllm._pricemap import rate as price_rate

__all__ = [
    "BATCH_BASES",
    "HALF_PRICE_BATCH_PROVIDERS",
    "BatchPrice",
    "BatchPricer",
    "BatchRates",
    "batch_price",
    "batch_rates",
    "batch_tokens",
]


# -- the batch price ---------------------------------------------------------------------------------------------
#: Providers whose Batch API is documented at half the live price: where litellm's map has no batch rate for a
#: model of theirs, half its live price is taken.
HALF_PRICE_BATCH_PROVIDERS = frozenset({"openai", "azure", "anthropic", "vertex_ai", "gemini", "bedrock", "mistral", "xai"})

#: What a batch price rests on, as said in the batch's summary and ``ipyllm.batches()``.
BATCH_BASES = {
    "batch": "litellm's batch prices",
    "half": "half the live price (litellm's map has no batch price for it; the provider documents 50 %)",
    "live": "the live price (no batch discount is known for this provider)",
    "unknown": "no price known",
}


@dataclass(frozen=True)
class BatchPrice:
    """USD for tokens bought through a provider's Batch API, and what the figure rests on (``BATCH_BASES``)."""

    usd: float
    basis: str

    @property
    def note(self) -> str:
        return BATCH_BASES[self.basis]


def batch_price(
    settings: Settings, model: str, provider: str | None, prompt_tokens: int, completion_tokens: int, usage: Any = None
) -> BatchPrice:
    """USD for these tokens at the batch price: litellm's ``*_cost_per_token_batches`` rates (its own batch cost
    calculator, ``call_type="retrieve_batch"``, with cached tokens at their batch rate); without them, half the live
    price where the provider documents 50 % (``HALF_PRICE_BATCH_PROVIDERS``), else the live price. Also an estimate:
    tokens in, USD out. NaN (basis ``unknown``) where the model has no price."""
    litellm = load_litellm()
    custom = custom_price(settings, model)
    if isinstance(custom, dict):  # per-token prices of the session's own: no batch rate of theirs is known
        live = price(settings, model, provider, prompt_tokens, completion_tokens)
        half = provider in HALF_PRICE_BATCH_PROVIDERS
        return BatchPrice(live / 2 if half else live, "unknown" if math.isnan(live) else "half" if half else "live")
    priced, priced_provider = (custom, None) if isinstance(custom, str) else (model, provider)
    try:
        info = litellm.get_model_info(priced, custom_llm_provider=priced_provider)
    except Exception:
        return BatchPrice(math.nan, "unknown")
    rates = info.get("input_cost_per_token_batches") is not None or info.get("output_cost_per_token_batches") is not None
    if not rates and provider not in HALF_PRICE_BATCH_PROVIDERS:
        live = price(settings, model, provider, prompt_tokens, completion_tokens, usage=usage)
        return BatchPrice(live, "unknown" if math.isnan(live) else "live")
    arguments: dict[str, Any] = {"model": priced, "custom_llm_provider": priced_provider}
    if usage is not None:
        arguments.update(usage_object(usage))
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, call_type="retrieve_batch", **arguments
        )
    except Exception:
        return BatchPrice(math.nan, "unknown")
    return BatchPrice(float(prompt_cost) + float(completion_cost), "batch" if rates else "half")


# -- the batch price of many rows --------------------------------------------------------------------------------
#: Model-map keys whose price the flat rates cannot express: a rate by prompt size (``..._above_200k_tokens``), a
#: tier table, a batch rate by cache lifetime (``cache_creation_input_token_cost_above_1hr_batches``). Such a model's
#: rows are priced by litellm one at a time.
_UNEXPRESSED = re.compile(r"_above_\d+(\.\d+)?[km]?_tokens|^tiered_pricing$|_above_.*_batches$")

#: A probe usage priced both ways when a model's rates are made: rates that disagree with litellm are not used.
_PROBE = {"prompt_tokens": 1237, "completion_tokens": 311, "cache_read_input_tokens": 517, "cache_creation_input_tokens": 97}


@dataclass(frozen=True)
class BatchRates:
    """A model's batch price per token, made once (``batch_rates``) and applied to each row (``usd``) as litellm's batch
    cost calculator applies them: cached tokens at the cache-read rate (as input where the model has none), tokens
    written to the cache at the cache-write rate (as input where the model has none), the rest of the prompt at the
    input rate. ``halved``: litellm's map has no batch rate (``basis`` ``half``): the live rates, each halved."""

    input: float
    output: float
    cache_read: float | None
    cache_write: float | None
    basis: str
    halved: bool = False

    def usd(self, prompt: int, completion: int, cached: int, written: int) -> float:
        """USD for one row's tokens, in the order of litellm's sums (so that the figures agree to the last bit)."""
        if self.halved:
            base = prompt - cached - written
            cost = base * self.input / 2
            cost += (float(cached) * self.cache_read if self.cache_read is not None and cached > 0 else 0.0) / 2
            cost += written * (self.input if self.cache_write is None else self.cache_write) / 2
            return cost + completion * self.output
        cached = cached if self.cache_read is not None else 0
        written = written if self.cache_write is not None else 0
        text = max(prompt - cached - written, 0)
        cost = text * self.input + cached * (self.cache_read or 0.0)
        cost += written * self.cache_write if self.cache_write is not None else 0.0
        return cost + completion * self.output


def batch_rates(settings: Settings, model: str, provider: str | None) -> BatchRates | None:
    """The model's batch rates (litellm's ``*_batches`` rates, else the live ones halved where the provider documents
    50 %), checked against litellm on a probe usage; None where a row must be priced by ``batch_price`` itself: the
    session's own per-token ``prices``, a provider with no batch discount, a price by tier or anything else the rates
    cannot express, or rates that disagree with litellm's figure."""
    custom = custom_price(settings, model)
    if isinstance(custom, dict):
        return None
    priced, priced_provider = (custom, None) if isinstance(custom, str) else (model, provider)
    try:
        info = load_litellm().get_model_info(priced, custom_llm_provider=priced_provider)
    except Exception:
        return None
    if any(_UNEXPRESSED.search(key) for key, value in info.items() if value is not None):
        return None

    def rate(key: str) -> float | None:
        return price_rate(info, key)

    batch_input, batch_output, live_input, live_output = (
        rate("input_cost_per_token_batches"),
        rate("output_cost_per_token_batches"),
        rate("input_cost_per_token"),
        rate("output_cost_per_token"),
    )
    if batch_input is None and batch_output is None and provider not in HALF_PRICE_BATCH_PROVIDERS:
        return None
    output = batch_output if batch_output is not None else (live_output / 2 if live_output is not None else 0.0)
    basis = "batch" if batch_input is not None or batch_output is not None else "half"
    if batch_input is not None:
        cache_read = rate("cache_read_input_token_cost_batches")
        rates = BatchRates(
            batch_input,
            output,
            rate("cache_read_input_token_cost") if cache_read is None else cache_read,
            rate("cache_creation_input_token_cost_batches"),
            basis,
        )
    elif live_input is not None:
        rates = BatchRates(live_input, output, rate("cache_read_input_token_cost"), rate("cache_creation_input_token_cost"), basis, True)
    else:
        return None
    for probe in (_PROBE, {"prompt_tokens": 1237, "completion_tokens": 311}):
        expected = batch_price(settings, model, provider, probe["prompt_tokens"], probe["completion_tokens"], probe)
        got = rates.usd(*batch_tokens(probe))  # type: ignore[misc]
        if expected.basis != basis or not math.isclose(expected.usd, got, rel_tol=1e-12, abs_tol=0.0):
            return None
    return rates


#: The usage fields (and detail fields) whose rows the rates price; a row reporting any other is priced by litellm.
_PLAIN_USAGE = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"}
    | {"cache_read_input_tokens", "cache_creation_input_tokens"}
)
_PLAIN_DETAILS = frozenset({"cached_tokens", "cache_creation_tokens", "cache_write_tokens", "text_tokens"})
_ZERO_DETAILS = frozenset({"audio_tokens", "image_tokens", "video_tokens"})
_PLAIN_OUTPUT_DETAILS = frozenset({"reasoning_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens", "text_tokens"})


def batch_tokens(usage: Any) -> tuple[int, int, int, int] | None:
    """A reported usage (a JSON dict) as the rates price it: prompt, completion, cached and cache-written tokens, as
    litellm reads them (``cache_read_input_tokens`` before ``prompt_tokens_details.cached_tokens``); None where the
    usage reports what the rates do not price (audio, image or video tokens, cache writes by lifetime, ...)."""
    if not isinstance(usage, dict) or not usage.keys() <= _PLAIN_USAGE:
        return None
    details = usage.get("prompt_tokens_details") or {}
    output = usage.get("completion_tokens_details") or {}
    if not isinstance(details, dict) or not isinstance(output, dict):
        return None
    for fields, plain in ((details, _PLAIN_DETAILS), (output, _PLAIN_OUTPUT_DETAILS)):
        for name, value in fields.items():
            if name not in plain and not (name in _ZERO_DETAILS and not value):
                return None
    counts = (
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("cache_read_input_tokens", details.get("cached_tokens")) or 0,
        usage.get("cache_creation_input_tokens", details.get("cache_write_tokens") or details.get("cache_creation_tokens")) or 0,
        *details.values(),
        *output.values(),
    )
    if not all(value is None or (type(value) is int and value >= 0) for value in counts):
        return None
    prompt, completion, cached, written = counts[:4]
    if prompt is None or completion is None:
        return None
    return prompt, completion, cached, written


class BatchPricer:
    """Prices the rows of one model at the batch price: tokens times the model's rates (``batch_rates``, made once),
    litellm's own figure (``batch_price``) for a row the rates cannot price, shared by the rows with the same usage."""

    def __init__(self, settings: Settings, model: str, provider: str | None) -> None:
        self.settings, self.model, self.provider = settings, model, provider
        self.rates = batch_rates(settings, model, provider)
        self.priced: dict[str, float] = {}  # litellm prices a usage in about 1 ms: rows with the same usage share one

    def __call__(self, prompt: int, completion: int, usage: Any) -> float:
        """USD for one row's tokens (``usage``: what the provider reported, JSON)."""
        tokens = batch_tokens(usage) if self.rates is not None else None
        if tokens is not None:
            assert self.rates is not None
            return self.rates.usd(*tokens)
        seen = json.dumps(usage, sort_keys=True)
        usd = self.priced.get(seen)
        if usd is None:
            usd = self.priced[seen] = batch_price(self.settings, self.model, self.provider, prompt, completion, usage).usd
        return usd
