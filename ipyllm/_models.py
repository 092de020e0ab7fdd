"""Which models there are: litellm's catalogue, and what an OpenAI-compatible server says it serves.

One catalogue serves the model picker and ``%llm_models`` / ``ipyllm.models()``: litellm's price map
(``litellm.model_cost``), read once. With ``base_url`` set, the server's own ``GET {base_url}/models``
answers instead; its list also names the alternatives when the server answers 404 for a model.

Listing a server's models never imports litellm (seconds): their prices and context windows come from
litellm's price map when litellm is already imported, else from the copy of it bundled in litellm's
package, read as JSON (0.05 to 0.1 s for its 3.5 MB, once per process), and from the session's ``prices``.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipyllm._config import Settings, config
from ipyllm._cost import custom_price
from ipyllm._litellm import load_litellm
from ipyllm._notices import notice
from ipyllm._pricemap import price_map
from ipyllm._secrets import Secret
from ipyllm.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Catalogue", "ModelEntry", "catalogue", "models", "price_map", "server_models"]

#: Catalogue modes priced per token (image, audio and video models are priced per item, not listed).
TEXT_MODES = ("chat", "completion", "responses", "embedding")

#: The columns of ``ipyllm.models()``, indexed by model name.
MODEL_COLUMNS = {
    "provider": "string",
    "mode": "string",
    "context_window": "Int64",
    "input_usd_per_1m": "float64",
    "output_usd_per_1m": "float64",
}


@dataclass(frozen=True)
class ModelEntry:
    """One catalogue model: provider, mode, context window (None: unknown), USD per 1M tokens (NaN: unknown)."""

    provider: str
    mode: str
    context_window: int | None
    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class Catalogue:
    """litellm's models: chat models by provider, every text model's entry, the provider prefixes litellm routes."""

    chat_models: dict[str, tuple[str, ...]]
    provider_of: dict[str, str]
    prefixes: frozenset[str]
    entries: dict[str, ModelEntry]

    @property
    def providers(self) -> list[str]:
        return sorted(self.chat_models)


def _per_million(entry: dict[str, Any], key: str) -> float:
    value = entry.get(key)
    return float(value) * 1e6 if isinstance(value, (int, float)) else math.nan


def _context(entry: dict[str, Any]) -> int | None:
    window = entry.get("max_input_tokens") or entry.get("max_tokens")
    return int(window) if isinstance(window, (int, float)) and window > 0 else None


@functools.lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    """Read litellm's price map once (a few ms after litellm's import)."""
    litellm = load_litellm()
    by_provider: dict[str, list[str]] = {}
    provider_of: dict[str, str] = {}
    entries: dict[str, ModelEntry] = {}
    for name, entry in litellm.model_cost.items():
        if not isinstance(entry, dict) or entry.get("mode") not in TEXT_MODES or not entry.get("litellm_provider"):
            continue
        provider, mode = str(entry["litellm_provider"]), str(entry["mode"])
        prices = _per_million(entry, "input_cost_per_token"), _per_million(entry, "output_cost_per_token")
        entries[name] = ModelEntry(provider, mode, _context(entry), *prices)
        if mode == "chat":
            by_provider.setdefault(provider, []).append(name)
            provider_of[name] = provider
    prefixes = frozenset(str(getattr(p, "value", p)) for p in litellm.provider_list)
    chat_models = {p: tuple(sorted(names, key=str.lower)) for p, names in by_provider.items()}
    return Catalogue(chat_models, provider_of, prefixes, entries)


# -- an OpenAI-compatible server's own list --------------------------------------------------------------


def _plain(api_key: str | None) -> str | None:
    """The key itself: a ``Secret``'s text is its masked form, so it is revealed (still masked in reprs)."""
    return api_key.reveal() if isinstance(api_key, Secret) else api_key


def _server_listing(base_url: str, api_key: str | None, timeout: float) -> list[dict[str, Any]] | None:
    """The ``data`` items of ``GET {base_url}/models``; None when the server does not answer with a list.

    The key goes out as a bearer token; it is revealed inside the header expression only, so that no
    frame an interrupt passes through holds it in plain text (``api_key`` may be ipyllm's masked ``Secret``).
    """
    headers = {"Accept": "application/json"}
    if api_key or os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = "Bearer " + str.__str__(_plain(api_key) or os.environ.get("OPENAI_API_KEY", ""))
    import urllib.request  # with ssl and http.client: 25 ms, for a list only some sessions ask for

    request = urllib.request.Request(f"{base_url.rstrip('/')}/models", headers=headers, method="GET")
    payload: Any = None
    interrupted = False
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read(2_000_000))
    except KeyboardInterrupt:
        interrupted = True
    except Exception:
        payload = None
    finally:
        headers.clear()
        request.headers.clear()
    if interrupted:
        # Raised afresh, outside the handler: urllib's frames (whose locals hold the header) are not in its traceback.
        raise KeyboardInterrupt
    items = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        return None
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


def server_models(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> list[str] | None:
    """The model ids an OpenAI-compatible server lists at ``GET {base_url}/models``, in its order.

    Parameters
    ----------
    base_url
        The server's base URL, as in ``config.base_url`` (e.g. ``http://127.0.0.1:8000/v1``).
    api_key
        Sent as a bearer token (``OPENAI_API_KEY`` when None); never shown.
    timeout
        Seconds to wait for the answer.

    Returns
    -------
    list of str, or None
        None when the server cannot be reached or does not answer with a model list.
    """
    listing = _server_listing(base_url, api_key, timeout)
    return None if listing is None else [str(item["id"]) for item in listing]


def _server_context(item: dict[str, Any]) -> int | None:
    """The context window a server states: vLLM's ``max_model_len``, OpenRouter's ``context_length``, llama.cpp's ``meta``."""
    meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
    stated = (item.get("max_model_len"), item.get("context_length"), item.get("context_window"), meta.get("n_ctx"), meta.get("n_ctx_train"))
    for value in stated:
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return None


# -- the frame ------------------------------------------------------------------------------------------


def _matches(name: str, words: list[str]) -> bool:
    lowered = name.lower()
    return all(word in lowered for word in words)


def _frame(rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    # Column by column: building 4,000 rows as dicts through from_dict takes seconds, this takes milliseconds.
    index = pd.Index(list(rows), dtype="string", name="model")
    data = {name: pd.array([row[name] for row in rows.values()], dtype=dtype) for name, dtype in MODEL_COLUMNS.items()}
    return pd.DataFrame(data, index=index)


def _strings(filter: object, provider: object) -> None:  # noqa: A002 - the documented name
    for name, value in (("filter", filter), ("provider", provider)):
        if value is not None and not isinstance(value, str):
            example = "models('gpt 4o')" if name == "filter" else "models(provider='anthropic')"
            raise InvalidInputError(f"{name} must be a string or None, not {type(value).__name__} {value!r}: e.g. {example}")


def _listed(names: list[str], limit: int = 5) -> str:
    """``a, b, c, d, e, ... and 3 more``."""
    return ", ".join(names[:limit]) + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def models(filter: str | None = None, provider: str | None = None) -> pd.DataFrame:  # noqa: A002 - the documented name
    """Models with their context window and prices in USD per 1M tokens, as a DataFrame indexed by name.

    With ``base_url`` set (and no ``provider`` asked for), the models the server lists at
    ``GET {base_url}/models`` (named ``openai/<id>``, as ipyllm calls them; prices from litellm's price map or
    the session's ``prices`` where known, else NaN; litellm is not imported for them); otherwise litellm's
    catalogue of text models (chat, completion, responses, embedding). When nothing matches ``filter``, one
    line on stderr says what there is.

    Parameters
    ----------
    filter
        Keep models whose name contains every word of it (case-insensitive).
    provider
        Keep the catalogue's models of this provider (``openai``, ``anthropic``, ``ollama``, ...).

    Returns
    -------
    pandas.DataFrame
        Columns ``provider``, ``mode``, ``context_window``, ``input_usd_per_1m``, ``output_usd_per_1m``.

    Raises
    ------
    InvalidInputError
        When ``filter`` or ``provider`` is not a string, or ``provider`` is not one litellm knows (the message
        names close matches); also a ``ValueError``. Nothing is sent.
    """
    _strings(filter, provider)
    words = (filter or "").lower().split()
    if provider is None and config.base_url:
        listing = _server_listing(config.base_url, config.api_key, min(config.timeout, 10.0))
        if listing is not None:
            rows = _server_rows(listing, words, config.snapshot())
            if not rows and words:
                offered = [str(item["id"]) for item in listing]
                what = f"it offers: {_listed(offered)}" if offered else "it lists no models"
                notice(f"no model of the server at {config.base_url} matches {filter!r}; {what}")
            return _frame(rows)
        notice(f"the server at {config.base_url} did not list its models (GET /models): showing litellm's catalogue instead")
    known = catalogue()
    if provider is not None and provider not in known.prefixes and not any(e.provider == provider for e in known.entries.values()):
        close = difflib.get_close_matches(provider, sorted(known.prefixes), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. openai, anthropic, ollama"
        raise InvalidInputError(f"unknown provider {provider!r}: {hint}")
    rows = {
        name: {
            "provider": entry.provider,
            "mode": entry.mode,
            "context_window": entry.context_window,
            "input_usd_per_1m": entry.input_per_million,
            "output_usd_per_1m": entry.output_per_million,
        }
        for name, entry in sorted(known.entries.items(), key=lambda item: (item[1].provider, item[0].lower()))
        if (provider is None or entry.provider == provider) and _matches(name, words)
    }
    if not rows and words:
        names = [name for name, entry in known.entries.items() if provider is None or entry.provider == provider]
        close = difflib.get_close_matches(" ".join(words), [name.lower() for name in names], n=3, cutoff=0.6)
        where = f"{provider}'s models in litellm's catalogue" if provider else "litellm's catalogue"
        hint = f"close matches: {', '.join(close)}" if close else "try fewer or shorter words"
        notice(f"no model in {where} matches {filter!r}; {hint}")
    return _frame(rows)


def _text_entry(prices: dict[str, Any], *names: str) -> dict[str, Any] | None:
    """The first of ``names`` that the price map lists as a text model."""
    for name in names:
        entry = prices.get(name)
        if isinstance(entry, dict) and entry.get("mode") in TEXT_MODES:
            return entry
    return None


def _server_rows(listing: list[dict[str, Any]], words: list[str], settings: Settings) -> dict[str, dict[str, Any]]:
    """A row per listed model that matches ``words``: the server's context window, else the price map's; prices
    from the session's ``prices``, else the price map's (NaN when unknown)."""
    prices = price_map()
    rows: dict[str, dict[str, Any]] = {}
    for item in listing:
        model_id = str(item["id"])
        name = model_id if model_id.startswith("openai/") else f"openai/{model_id}"
        if not _matches(name, words):
            continue
        entry = _text_entry(prices, model_id, name)
        custom = custom_price(settings, name)
        if isinstance(custom, str):
            priced = _text_entry(prices, custom, custom.split("/", 1)[-1]) or {}
        else:
            priced = custom if isinstance(custom, dict) else entry or {}
        rows[name] = {
            "provider": "openai",
            "mode": entry["mode"] if entry else None,
            "context_window": _server_context(item) or (_context(entry) if entry else None),
            "input_usd_per_1m": _per_million(priced, "input_cost_per_token"),
            "output_usd_per_1m": _per_million(priced, "output_cost_per_token"),
        }
    return rows
