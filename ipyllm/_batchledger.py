"""Provider batches in the ledger: what each submitted batch is (``BatchRecord``), its table in SQLite and PostgreSQL,
and the statements both stores run, so that a batch outlives the kernel that sent it.

A map sent through a provider's Batch API is recorded as it is created: the provider, its batch id and files, the
rows' cache keys (the lines' ``custom_id``), the map's key (a digest of every row's cache key: the same map gives
the same key in any kernel), the model, the status, who sent it and from where, and the budget hold that reserves
its cost. Running the same map again finds the record and attaches to the batch. The results are taken once:
the rows, their cache entries, the end of the hold and the status ``collected`` are written in one transaction,
which a second kernel's attempt finds already done.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BATCH_COLUMNS",
    "BATCH_FRAME_COLUMNS",
    "CLAIM_BATCH",
    "DONE",
    "ENDED",
    "INSERT_BATCH",
    "PG_TABLE",
    "SELECT_BATCHES",
    "SQLITE_TABLE",
    "UPDATE_BATCH",
    "BatchRecord",
    "batch_values",
    "batches_frame",
    "postgres",
    "record_of",
    "update_values",
]

#: ``ipyllm.batches()``'s columns, in order.
BATCH_FRAME_COLUMNS = (
    "id", "status", "provider", "model", "rows", "completed", "failed", "submitted", "ended", "collected", "session", "user", "host",
    "part", "parts", "estimate_usd", "input_file_id", "output_file_id", "error_file_id", "map_key",
)  # fmt: skip

#: Provider statuses after which nothing more happens at the provider.
ENDED = ("completed", "failed", "expired", "cancelled")
#: Our statuses after which nothing more is to be done: its results taken (``collected``), or the provider no longer
#: knows the batch (``lost``).
DONE = ("collected", "lost")


@dataclass
class BatchRecord:
    """One provider batch, as the ledger keeps it."""

    id: str
    provider: str
    model: str
    map_key: str
    #: The rows' cache keys, which are the lines' ``custom_id``.
    keys: tuple[str, ...]
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: The provider's status (``validating``, ``in_progress``, ``finalizing``, ``completed``, ``failed``, ``expired``,
    #: ``cancelling``, ``cancelled``), or ``collected`` / ``lost``.
    status: str = "validating"
    submitted: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ended: datetime | None = None
    collected: datetime | None = None
    session: str | None = None
    user: str | None = None
    host: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    #: The budget hold that reserves the batch's estimated cost until its results are taken.
    hold_id: str | None = None
    estimate_usd: float | None = None
    base_url: str | None = None
    #: The output cap every line was sent with (None: the user's own ``max_tokens``, or none).
    output_cap: int | None = None
    part: int = 1
    parts: int = 1

    @property
    def done(self) -> bool:
        return self.status in DONE


#: The table's columns, in ``BatchRecord``'s order (times in microseconds, the keys as a JSON list).
BATCH_COLUMNS = tuple(
    {"submitted": "submitted_us", "ended": "ended_us", "collected": "collected_us"}.get(f.name, f.name) for f in fields(BatchRecord)
)
_TYPES = {
    "keys": "TEXT NOT NULL",
    "map_key": "TEXT NOT NULL",
    "status": "TEXT NOT NULL",
    "id": "TEXT PRIMARY KEY",
    "estimate_usd": "{real}",
    **{
        name: "{integer}"
        for name in ("submitted_us", "ended_us", "collected_us", "total", "completed", "failed", "output_cap", "part", "parts")
    },
}


def _table(real: str, integer: str, quote: str) -> str:
    columns = ", ".join(
        f"{quote if c == 'user' else ''}{c}{quote if c == 'user' else ''} {_TYPES.get(c, 'TEXT').format(real=real, integer=integer)}"
        for c in BATCH_COLUMNS
    )
    return f"CREATE TABLE IF NOT EXISTS batches ({columns})"


SQLITE_TABLE = _table("REAL", "INTEGER", "")
PG_TABLE = _table("DOUBLE PRECISION", "BIGINT", '"')


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1_000_000)


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, timezone.utc)


def batch_values(record: BatchRecord) -> list[Any]:
    """The record as the table's row."""
    values: list[Any] = []
    for f in fields(BatchRecord):
        value = getattr(record, f.name)
        if f.name == "keys":
            value = json.dumps(list(value))
        elif isinstance(value, datetime):
            value = _micros(value)
        values.append(value)
    return values


def record_of(row: Sequence[Any]) -> BatchRecord:
    """A table row as the record."""
    values: dict[str, Any] = {}
    for f, value in zip(fields(BatchRecord), row, strict=True):
        if f.name == "keys":
            value = tuple(json.loads(value or "[]"))
        elif f.name in ("submitted", "ended", "collected"):
            value = _moment(value)
        values[f.name] = value
    if values["submitted"] is None:
        values["submitted"] = datetime.now(timezone.utc)
    return BatchRecord(**values)


_NAMES = ", ".join('"user"' if c == "user" else c for c in BATCH_COLUMNS)
#: The statements both stores run (``?`` placeholders; ``postgres()`` gives PostgreSQL's).
INSERT_BATCH = f"INSERT INTO batches ({_NAMES}) VALUES ({', '.join('?' * len(BATCH_COLUMNS))})"
SELECT_BATCHES = f"SELECT {_NAMES} FROM batches"
#: The provider's latest word on a batch, unless its results are already taken.
UPDATE_BATCH = (
    "UPDATE batches SET status = ?, total = ?, completed = ?, failed = ?, output_file_id = ?, error_file_id = ?, ended_us = ?"
    " WHERE id = ? AND status NOT IN ('collected', 'lost')"
)
#: Taking the results: only the first to ask changes the row (the caller then writes the rows in the same transaction).
CLAIM_BATCH = "UPDATE batches SET status = ?, collected_us = ? WHERE id = ? AND status NOT IN ('collected', 'lost')"


def postgres(statement: str) -> str:
    """A statement with PostgreSQL's placeholders."""
    return statement.replace("?", "%s")


def update_values(record: BatchRecord) -> list[Any]:
    """``UPDATE_BATCH``'s parameters."""
    return [
        record.status,
        record.total,
        record.completed,
        record.failed,
        record.output_file_id,
        record.error_file_id,
        _micros(record.ended),
        record.id,
    ]


def batches_frame(records: Sequence[BatchRecord]) -> pd.DataFrame:
    """``ipyllm.batches()``: the records as a frame, a row each, with nullable integers and strings."""
    import pandas as pd

    data = {
        "id": [r.id for r in records],
        "status": [r.status for r in records],
        "provider": [r.provider for r in records],
        "model": [r.model for r in records],
        "rows": [len(r.keys) for r in records],
        "completed": [r.completed for r in records],
        "failed": [r.failed for r in records],
        "submitted": pd.to_datetime([r.submitted for r in records], utc=True),
        "ended": pd.to_datetime([r.ended for r in records], utc=True),
        "collected": pd.to_datetime([r.collected for r in records], utc=True),
        "session": [r.session for r in records],
        "user": [r.user for r in records],
        "host": [r.host for r in records],
        "part": [r.part for r in records],
        "parts": [r.parts for r in records],
        "estimate_usd": [r.estimate_usd for r in records],
        "input_file_id": [r.input_file_id for r in records],
        "output_file_id": [r.output_file_id for r in records],
        "error_file_id": [r.error_file_id for r in records],
        "map_key": [r.map_key for r in records],
    }
    frame = pd.DataFrame(data, columns=list(BATCH_FRAME_COLUMNS))
    for name in ("rows", "completed", "failed", "part", "parts"):
        frame[name] = frame[name].astype("Int64")
    for name in (
        "id",
        "status",
        "provider",
        "model",
        "session",
        "user",
        "host",
        "input_file_id",
        "output_file_id",
        "error_file_id",
        "map_key",
    ):
        frame[name] = frame[name].astype("string")
    frame["estimate_usd"] = frame["estimate_usd"].astype("float64")
    return frame
