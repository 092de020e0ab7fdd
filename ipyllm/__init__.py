"""ipyllm: LLM calls from Jupyter through litellm, with retries, usage rows and spending limits.

``%load_ext ipyllm`` registers the magics. The Python API: ``ipyllm.config`` (the session configuration),
``complete``, ``embed``, ``estimate``, ``usage``, ``picker`` (the model-picker widget); ``ipyllm.testing`` is an
OpenAI-compatible stub server for offline use.
Importing ipyllm does not import litellm, pandas, IPython or ipywidgets; each is imported when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipyllm._api import SESSION_ID, complete, embed, estimate, usage
from ipyllm._client import Embeddings, Estimate, Reply, warm_up
from ipyllm._config import LLMConfig, SettingError, config
from ipyllm._errors import (
    AuthenticationError,
    BudgetExceededError,
    LLMError,
    MissingKeyError,
    ProviderUnavailableError,
    RateLimitError,
    RequestRejectedError,
    StreamBrokenError,
    UnknownModelError,
)
from ipyllm._ledger import COLUMNS, UsageRow
from ipyllm._retry import RetryNote

if TYPE_CHECKING:
    from ipyllm._widget import Picker

__version__ = "0.1.0"

__all__ = [
    "COLUMNS",
    "SESSION_ID",
    "AuthenticationError",
    "BudgetExceededError",
    "Embeddings",
    "Estimate",
    "LLMConfig",
    "LLMError",
    "MissingKeyError",
    "ProviderUnavailableError",
    "RateLimitError",
    "Reply",
    "RequestRejectedError",
    "RetryNote",
    "SettingError",
    "StreamBrokenError",
    "UnknownModelError",
    "UsageRow",
    "complete",
    "config",
    "embed",
    "estimate",
    "picker",
    "usage",
    "warm_up",
]


def picker() -> Picker:
    """The model picker: an ipywidgets panel bound both ways to ``ipyllm.config`` (``close()`` unbinds it)."""
    from ipyllm._widget import picker as make_picker

    return make_picker()


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ipyllm``: register the magics and warm litellm up in the background."""
    from ipyllm._magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext ipyllm``: remove the magics; the configuration and the usage rows stay."""
    from ipyllm._magics import unload

    unload(ipython)
