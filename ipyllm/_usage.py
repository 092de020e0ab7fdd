"""Usage rows: what one logical call consumed and how it ended, and the pandas frame they make.

Knows nothing of litellm or of where rows are kept: the call engine fills a ``UsageRow``, the ledger stores it,
``to_frame`` shows it with the exact columns and dtypes of SPEC section 5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from operator import attrgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "STATUSES", "UsageRow", "column_array", "frame_from_columns", "micros", "row_values", "to_frame", "utc_now"]


#: The usage frame's columns and their dtypes (SPEC section 5).
COLUMNS: dict[str, str] = {
    "timestamp": "datetime64[ns, UTC]",
    "session": "string",
    "cell": "Int64",
    "source": "string",
    "kind": "string",
    "model": "string",
    "provider": "string",
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "total_tokens": "Int64",
    "cached_tokens": "Int64",
    "tokens_estimated": "boolean",
    "cost_usd": "float64",
    "latency_s": "float64",
    "attempts": "Int64",
    "status": "string",
    "error": "string",
    "cache_creation_tokens": "Int64",
    "images": "Int64",
    "batch": "string",
    "tier": "string",
    "notebook": "string",
    "user": "string",
    "host": "string",
}


STATUSES = ("ok", "error", "cached", "over_budget", "interrupted")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class UsageRow:
    """What one logical call (all its attempts together) consumed and how it ended."""

    timestamp: datetime = field(default_factory=utc_now)
    session: str = ""
    cell: int | None = None
    source: str = "api"
    kind: str = "chat"
    model: str = ""
    provider: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: Prompt tokens the provider served from its prompt cache (priced at its cached rate).
    cached_tokens: int | None = None
    #: True when the token counts were counted locally, not reported by the provider.
    tokens_estimated: bool = False
    cost_usd: float = math.nan
    latency_s: float = 0.0
    attempts: int = 1
    status: str = "ok"
    error: str | None = None
    #: Prompt tokens written to the provider's prompt cache (priced at its cache-write rate).
    cache_creation_tokens: int | None = None
    #: Images sent with the call (None where none were, or the row predates issue 20).
    images: int | None = None
    #: The ``ipyllm.map`` batch this call belongs to (None for single calls).
    batch: str | None = None
    #: How the call was bought: ``live`` (a call of its own) or ``batch`` (a provider's Batch API).
    tier: str = "live"
    #: The notebook the calling kernel belongs to (Jupyter's ``JPY_SESSION_NAME``), where Jupyter says it.
    notebook: str | None = None
    user: str | None = None
    host: str | None = None

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


assert [f.name for f in fields(UsageRow)] == list(COLUMNS), "UsageRow and COLUMNS must agree"
_as_tuple = attrgetter(*COLUMNS)


def micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def frame_from_columns(columns: dict[str, Sequence[Any]], timestamps_in_micros: bool = False) -> pd.DataFrame:
    """Build the usage frame from column sequences (a database's values, None where missing): the columns given, in frame
    order. Column-wise: each column becomes one numpy array and a mask of its missing values, without Python work per value."""
    import pandas as pd

    data: dict[str, Any] = {}
    for name, dtype in COLUMNS.items():
        if name in columns:
            values = columns[name]
            if name == "timestamp" and not timestamps_in_micros:
                values = [micros(v) for v in values]
            data[name] = column_array(dtype, values)
    return pd.DataFrame(data, columns=list(data), copy=False)


def column_array(dtype: str, values: Any, missing: Any = None) -> Any:
    """One column of the usage frame (``dtype`` one of ``COLUMNS``'s) from a sequence or array of its values, None (or
    NaN) where missing, the time in microseconds; or, for a nullable number, from its values and a mask of the missing
    ones."""
    import numpy as np
    import pandas as pd

    if dtype.startswith("datetime64"):
        return pd.to_datetime(np.asarray(values, dtype="int64"), unit="us", utc=True).as_unit("ns")
    # Python's values into an object array by iteration: 4-5 times faster than np.asarray, which looks into each.
    objects = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=object, count=len(values))
    if dtype == "string":
        return pd.array(objects, dtype="string")  # pandas' own C loop: None -> NA
    if missing is None:
        flags = pd.isna(objects)
        objects = np.where(flags, np.nan if dtype == "float64" else 0, objects) if flags.any() else objects
    else:
        flags = np.asarray(missing, dtype=bool)
    if dtype == "float64":
        return objects.astype("float64")
    if dtype == "boolean":
        return pd.arrays.BooleanArray(objects.astype(bool), flags)
    return pd.arrays.IntegerArray(objects.astype("int64"), flags)


def to_frame(rows: Iterable[UsageRow]) -> pd.DataFrame:
    """The usage frame of SPEC section 5: exact columns and dtypes, also when there are no rows."""
    records = [_as_tuple(r) for r in rows]
    columns = list(zip(*records, strict=True)) if records else [() for _ in COLUMNS]
    return frame_from_columns(dict(zip(COLUMNS, columns, strict=True)))


_COST = list(COLUMNS).index("cost_usd")


def row_values(row: UsageRow) -> list[Any]:
    """A row as the ledger stores it: the timestamp in microseconds, an unknown cost as NULL."""
    values = list(_as_tuple(row))
    values[0] = micros(row.timestamp)
    if isinstance(values[_COST], float) and math.isnan(values[_COST]):
        values[_COST] = None
    return values
