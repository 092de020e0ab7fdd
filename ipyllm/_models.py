"""Which models there are: litellm's catalogue, and what an OpenAI-compatible server says it serves.

One catalogue serves the model picker and ``%llm_models`` / ``ipyllm.models()``: litellm's price map
(``litellm.model_cost``), read once. With ``base_url`` set, the server's own ``GET {base_url}/models``
answers instead; its list also names the alternatives when the server answers 404 for a model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipyllm._client import load_litellm, price
from ipyllm._config import Secret

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Catalogue", "ModelEntry", "catalogue", "models", "server_models"]

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


def models(filter: str | None = None, provider: str | None = None) -> pd.DataFrame:  # noqa: A002 - the documented name
    """Models with their context window and prices in USD per 1M tokens, as a DataFrame indexed by name.

    With ``base_url`` set (and no ``provider`` asked for), the models the server lists at
    ``GET {base_url}/models`` (named ``openai/<id>``, as ipyllm calls them; prices from litellm's catalogue or
    the session's ``prices`` where known, else NaN); otherwise litellm's catalogue of text models (chat,
    completion, responses, embedding).

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
    ValueError
        When ``provider`` is not one litellm knows (the message names close matches).
    """
    from ipyllm._config import config

    words = (filter or "").lower().split()
    known = catalogue()
    if provider is None and config.base_url:
        listing = _server_listing(config.base_url, config.api_key, min(config.timeout, 10.0))
        if listing is not None:
            return _frame(_server_rows(listing, words))
        from ipyllm._api import warn

        warn(f"the server at {config.base_url} did not list its models (GET /models): showing litellm's catalogue instead")
    if provider is not None and provider not in known.prefixes and not any(e.provider == provider for e in known.entries.values()):
        import difflib

        close = difflib.get_close_matches(provider, sorted(known.prefixes), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. openai, anthropic, ollama"
        raise ValueError(f"unknown provider {provider!r}: {hint}")
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
    return _frame(rows)


def _server_rows(listing: list[dict[str, Any]], words: list[str]) -> dict[str, dict[str, Any]]:
    from ipyllm._config import config

    settings = config.snapshot()
    known = catalogue().entries
    rows: dict[str, dict[str, Any]] = {}
    for item in listing:
        model_id = str(item["id"])
        name = model_id if model_id.startswith("openai/") else f"openai/{model_id}"
        if not _matches(name, words):
            continue
        entry = known.get(model_id)
        rows[name] = {
            "provider": "openai",
            "mode": entry.mode if entry else None,
            "context_window": _server_context(item) or (entry.context_window if entry else None),
            "input_usd_per_1m": price(settings, name, "openai", 1_000_000, 0),
            "output_usd_per_1m": price(settings, name, "openai", 0, 1_000_000),
        }
    return rows
