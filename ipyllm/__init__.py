"""ipyllm: LLM calls from Jupyter through litellm, with retries, usage rows and spending limits.

``%load_ext ipyllm`` registers the magics. The Python API: ``ipyllm.config`` (the session configuration),
``complete`` / ``acomplete``, ``map`` / ``amap`` (a prompt per row of a DataFrame) and ``last_batch``,
``embed``, ``estimate``, ``usage``, ``picker`` (the model-picker widget), ``models`` (the model list), ``chat_history`` /
``chat_reset`` (the ``--chat`` conversation); ``ipyllm.testing`` is an
OpenAI-compatible stub server for offline use.
Importing ipyllm does not import litellm, pandas, IPython or ipywidgets; each is imported when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipyllm._api import (
    SESSION_ID,
    Session,
    acomplete,
    amap,
    batch,
    batches,
    complete,
    embed,
    estimate,
    last_batch,
    map,  # noqa: A004 - ipyllm.map
    usage,
)
from ipyllm._batchdata import Batch
from ipyllm._chat import chat_history, chat_reset
from ipyllm._config import LLMConfig, config
from ipyllm._cost import Estimate
from ipyllm._engine import Embeddings, Reply
from ipyllm._litellm import warm_up
from ipyllm._provider_batch import ProviderBatch
from ipyllm._retry import RetryNote
from ipyllm._routes import BatchEstimate
from ipyllm._usage import COLUMNS, UsageRow
from ipyllm.errors import (
    AuthenticationError,
    BatchDetached,
    BatchError,
    BatchInterrupted,
    BudgetExceededError,
    Interrupted,
    InvalidInputError,
    InvalidOutputError,
    LLMError,
    MissingKeyError,
    ProviderUnavailableError,
    RateLimitError,
    RequestRejectedError,
    SettingError,
    StreamBrokenError,
    UnknownModelError,
    UnknownSettingError,
)

if TYPE_CHECKING:
    import pandas as pd

    from ipyllm._widget import Picker

__version__ = "0.1.0"

__all__ = [
    "COLUMNS",
    "SESSION_ID",
    "AuthenticationError",
    "Batch",
    "BatchDetached",
    "BatchError",
    "BatchEstimate",
    "BatchInterrupted",
    "BudgetExceededError",
    "Embeddings",
    "Estimate",
    "Interrupted",
    "InvalidInputError",
    "InvalidOutputError",
    "LLMConfig",
    "LLMError",
    "MissingKeyError",
    "ProviderBatch",
    "ProviderUnavailableError",
    "RateLimitError",
    "Reply",
    "RequestRejectedError",
    "RetryNote",
    "Session",
    "SettingError",
    "StreamBrokenError",
    "UnknownModelError",
    "UnknownSettingError",
    "UsageRow",
    "acomplete",
    "amap",
    "batch",
    "batches",
    "chat_history",
    "chat_reset",
    "complete",
    "config",
    "embed",
    "estimate",
    "last_batch",
    "map",
    "models",
    "picker",
    "usage",
    "warm_up",
]


def picker() -> Picker:
    """The model picker: an ipywidgets panel bound both ways to ``ipyllm.config`` (``close()`` unbinds it)."""
    from ipyllm._widget import picker as make_picker

    return make_picker()


def models(filter: str | None = None, provider: str | None = None) -> pd.DataFrame:  # noqa: A002 - the documented name
    """Models with context window and USD per 1M tokens: litellm's catalogue, or the ``base_url`` server's own list.

    ``filter`` keeps names containing all its words; ``provider`` keeps one provider's catalogue models.
    See ``%llm_models``.
    """
    from ipyllm._models import models as list_models

    return list_models(filter, provider)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ipyllm``: register the magics and warm litellm up in the background."""
    from ipyllm._magics import load

    load(ipython, picker)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext ipyllm``: remove the magics; the configuration and the usage rows stay."""
    from ipyllm._magics import unload

    unload(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter Server's hook: the usage endpoints under ``/ipyllm/api/`` (imported only by a Jupyter server)."""
    from ipyllm._server import IPyLLM

    return [{"module": "ipyllm._server", "app": IPyLLM}]
