"""The model names litellm can price, without importing litellm (its import takes seconds).

``prices`` aliases (``{"my-deployment": "gpt-4o-mini"}``) are checked when they are set, which can be while
``ipython_config.py`` is applied at ``%load_ext``: so while litellm is not imported, the names come from the
price map bundled in its package (``model_prices_and_context_window_backup.json``, found with
``importlib.util.find_spec``, read once: about 50 ms for its 3.5 MB and 4,878 names, then a set lookup);
once it is, from ``litellm.model_cost``, which also holds the models registered with ``litellm.register_model``.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["CAPABILITY_KEYS", "PRICE_KEYS", "close_names", "declared", "model_prices", "price_map", "priceable", "rate", "session_price"]

#: The per-token prices a ``prices`` dict may give, and the capabilities it may declare (litellm's model-info names).
PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")
CAPABILITY_KEYS = ("supports_vision", "supports_pdf_input")

_BUNDLED = "model_prices_and_context_window_backup.json"


@functools.lru_cache(maxsize=1)
def _bundled() -> dict[str, Any]:
    """litellm's bundled price map, read as JSON without importing litellm; empty when it cannot be found or read
    (then nothing is refused)."""
    try:
        spec = importlib.util.find_spec("litellm")  # finds the package without running it
    except (ImportError, ValueError):
        return {}
    for location in list(spec.submodule_search_locations or ()) if spec is not None else []:
        try:
            with open(os.path.join(location, _BUNDLED), encoding="utf-8") as file:
                prices = json.load(file)
        except (OSError, ValueError):
            continue
        if isinstance(prices, dict):
            prices.pop("sample_spec", None)
            return prices
    return {}


def price_map() -> dict[str, Any]:
    """litellm's price map (name -> prices, context window, mode): its own once litellm is imported, else the
    bundled copy (what litellm itself reads with ``LITELLM_LOCAL_MODEL_COST_MAP``)."""
    litellm = sys.modules.get("litellm")
    # While the warm-up thread imports litellm, the module exists without its price map: the bundled one answers.
    model_cost = getattr(litellm, "model_cost", None) if litellm is not None else None
    if isinstance(model_cost, dict) and model_cost:
        return model_cost
    return _bundled()


def priceable(model: str) -> bool:
    """Whether litellm can price ``model``: a name in its price map, or ``provider/name`` with the name in it."""
    names = price_map()
    if not names:
        return True  # no price map to ask: litellm's own pricing will say
    return model in names or ("/" in model and model.split("/", 1)[1] in names)


def close_names(model: str, n: int = 3) -> list[str]:
    """The price map's names closest to ``model``; for ``provider/name``, ``provider/`` and the names closest to ``name`` first."""
    names = [name for name in price_map() if name != "sample_spec"]
    close: list[str] = []
    if "/" in model:
        provider, name = model.split("/", 1)
        close = [f"{provider}/{match}" for match in difflib.get_close_matches(name, names, n=n) if "/" not in match]
    return (close + [match for match in difflib.get_close_matches(model, names, n=n) if match not in close])[:n]


def _entry(model: str, prices: Mapping[str, Any] | None) -> Any:
    """The session's ``prices`` entry for ``model`` (also without its ``provider/`` prefix), or None."""
    if not prices:
        return None
    custom = prices.get(model)
    if custom is None and "/" in model:
        custom = prices.get(model.split("/", 1)[1])
    return custom


def session_price(model: str, prices: Mapping[str, Any] | None) -> str | dict[str, float] | None:
    """What the session's ``prices`` say ``model`` costs: a base model's name, its per-token prices (the capability
    flags left out: litellm takes the dict as numbers), or None, also for an entry of flags alone (the model is
    priced as if it had no entry)."""
    custom = _entry(model, prices)
    if isinstance(custom, Mapping):
        rates = {key: value for key, value in custom.items() if key in PRICE_KEYS}
        return rates or None
    return custom if isinstance(custom, str) else None


def declared(model: str, prices: Mapping[str, Any] | None, capability: str) -> bool | None:
    """A capability (``supports_vision``, ``supports_pdf_input``) the session's ``prices`` declare for ``model``;
    None when they say nothing (litellm's model info then decides)."""
    custom = _entry(model, prices)
    flag = custom.get(capability) if isinstance(custom, Mapping) else None
    return flag if isinstance(flag, bool) else None


def model_prices(model: str, prices: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The price map's entry for ``model`` (also as ``provider/name`` with the name in the map), after the session's
    ``prices``: an alias (``{"my-deployment": "gpt-4o-mini"}``) names the entry, per-token prices are the entry;
    None when the model has no price."""
    custom = session_price(model, prices)
    if isinstance(custom, Mapping):
        return dict(custom)
    name = custom if isinstance(custom, str) else model
    names = price_map()
    entry = names.get(name)
    if entry is None and "/" in name:
        entry = names.get(name.split("/", 1)[1])
    return entry if isinstance(entry, dict) else None


def rate(entry: Mapping[str, Any] | None, name: str) -> float | None:
    """A per-token rate of a price-map entry (``input_cost_per_token``, ...): None when absent or not a number."""
    value = entry.get(name) if entry is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
