"""What prompt caching and batch pricing saved against list price, from the usage frame and litellm's price map.

A row's list price is what its tokens cost at the model's normal rates: every prompt token at the input price (the
ones read from or written to the provider's prompt cache too) and every completion token at the output price. Its
saving is that minus ``cost_usd``: a cache read saves, a cache write costs more (negative), a row bought through a
provider's Batch API (``tier`` ``batch``) saves the batch discount. Rows answered from ipyllm's own cache bought
nothing and save nothing (0). A model without a price saves NA, never a made-up 0.

Vectorised: the rates are looked up once per model (``_pricemap``: litellm's bundled price map, read without
importing litellm in a fresh kernel), then every row is priced with pandas at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ipyllm._pricemap import model_prices, rate

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["list_usd", "rates_of", "saved_usd"]


def _rate(model: Any, name: str, prices: Mapping[str, Any] | None) -> float | None:
    return rate(model_prices(model, prices) if isinstance(model, str) else None, name)


def rates_of(models: Any, prices: Mapping[str, Any] | None = None) -> dict[str, tuple[float, float]]:
    """Each of ``models``' input and output rates per token, for those that have both."""
    found = {}
    for name in models:
        if isinstance(name, str):
            rates = (_rate(name, "input_cost_per_token", prices), _rate(name, "output_cost_per_token", prices))
            if rates[0] is not None and rates[1] is not None:
                found[name] = (float(rates[0]), float(rates[1]))
    return found


def _rates(frame: pd.DataFrame, prices: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """Per row, its model's input and output rates (NaN where the model has no price): looked up once per model."""
    import pandas as pd

    models = frame["model"].astype(object)
    names = [name for name in pd.unique(models) if isinstance(name, str)]
    rates = {name: (_rate(name, "input_cost_per_token", prices), _rate(name, "output_cost_per_token", prices)) for name in names}
    known = {name: rate for name, rate in rates.items() if rate[0] is not None and rate[1] is not None}
    input_rate = models.map({name: rate[0] for name, rate in known.items()}).astype("float64").to_numpy()
    output_rate = models.map({name: rate[1] for name, rate in known.items()}).astype("float64").to_numpy()
    return input_rate, output_rate


def list_usd(frame: pd.DataFrame, prices: Mapping[str, Any] | None = None) -> pd.Series:
    """Each row's tokens at its model's list price (normal input and output rates); NaN where the model has no price
    or the row no prompt tokens. ``prices`` is the session's ``prices`` setting (aliases and per-token prices)."""
    import pandas as pd

    return pd.Series(_listed(frame, *_rates(frame, prices)), index=frame.index, name="list_usd")


def _listed(frame: pd.DataFrame, input_rate: Any, output_rate: Any) -> Any:
    import numpy as np

    prompt = frame["prompt_tokens"].to_numpy(dtype="float64", na_value=np.nan)
    completion = frame["completion_tokens"].to_numpy(dtype="float64", na_value=0.0)
    return prompt * input_rate + completion * output_rate


def saved_usd(frame: pd.DataFrame, prices: Mapping[str, Any] | None = None) -> pd.Series:
    """Each row's saving against list price: ``list_usd`` minus ``cost_usd``; 0 for a row answered from ipyllm's own
    cache (when its model has a price); NaN where either is unknown."""
    import numpy as np
    import pandas as pd

    input_rate, output_rate = _rates(frame, prices)
    listed = _listed(frame, input_rate, output_rate)
    cost = frame["cost_usd"].to_numpy(dtype="float64")
    from_cache = (frame["status"] == "cached").to_numpy(dtype=bool, na_value=False)
    saved = np.where(from_cache, np.where(np.isnan(input_rate), np.nan, 0.0), listed - cost)
    return pd.Series(saved, index=frame.index, name="saved_usd")
