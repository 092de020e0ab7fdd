"""Usage rows: one per logical call, kept by a ledger, read as a pandas frame. Knows nothing of litellm.

A ledger is anything with ``append(row)`` and ``rows(session=None)``; ``MemoryLedger`` keeps this
session's rows in memory. A persistent store implements the same two methods, so the call path does not
change when it arrives.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from operator import attrgetter
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "Ledger", "MemoryLedger", "UsageRow", "to_frame"]

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
    "cost_usd": "float64",
    "latency_s": "float64",
    "attempts": "Int64",
    "status": "string",
    "error": "string",
}

STATUSES = ("ok", "error", "cached", "over_budget", "interrupted")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class UsageRow:
    """What one logical call (all its attempts together) consumed and how it ended."""

    timestamp: datetime = field(default_factory=_now)
    session: str = ""
    cell: int | None = None
    source: str = "api"
    kind: str = "chat"
    model: str = ""
    provider: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float = math.nan
    latency_s: float = 0.0
    attempts: int = 1
    status: str = "ok"
    error: str | None = None

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


assert [f.name for f in fields(UsageRow)] == list(COLUMNS), "UsageRow and COLUMNS must agree"


class Ledger(Protocol):
    def append(self, row: UsageRow) -> None: ...

    def rows(self, session: str | None = None) -> list[UsageRow]: ...


class MemoryLedger:
    """Rows kept in this process, in call order; safe to append from several threads."""

    def __init__(self) -> None:
        self._rows: list[UsageRow] = []
        self._lock = threading.Lock()

    def append(self, row: UsageRow) -> None:
        with self._lock:
            self._rows.append(row)

    def rows(self, session: str | None = None) -> list[UsageRow]:
        with self._lock:
            rows = list(self._rows)
        return rows if session is None else [r for r in rows if r.session == session]

    def __len__(self) -> int:
        return len(self._rows)


def to_frame(rows: Sequence[UsageRow] | Iterable[tuple[object, ...]]) -> pd.DataFrame:
    """The usage frame of SPEC section 5: exact columns and dtypes, also when there are no rows."""
    import pandas as pd

    as_tuple = attrgetter(*COLUMNS)
    records = [as_tuple(r) if isinstance(r, UsageRow) else r for r in rows]
    columns = list(zip(*records, strict=True)) if records else [()] * len(COLUMNS)
    data = {}
    for (name, dtype), values in zip(COLUMNS.items(), columns, strict=True):
        if name == "timestamp":
            data[name] = pd.to_datetime(pd.Series(values, dtype="object"), utc=True).astype(dtype)
        else:
            data[name] = pd.Series(values, dtype="object").astype(dtype) if dtype != "float64" else pd.Series(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(COLUMNS))
