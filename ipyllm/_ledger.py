"""Usage rows: one per logical call, kept in memory and in a persistent ledger, read as a pandas frame.

Knows nothing of litellm. ``MemoryLedger`` holds this session's rows (always complete, whatever happens
to the ledger). A ``Store`` persists them: ``open_store(usage_db)`` gives the SQLite file
(``ipyllm._sqlite``) or the team's PostgreSQL server (``ipyllm._postgres``, for a ``postgresql://`` URL);
the session, budgets and views talk to the ``Store`` protocol only. Backends are imported on first use,
so ``import ipyllm`` does not pay for a database driver.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ipyllm._notices import notice

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "Headroom",
    "Hold",
    "Limit",
    "MemoryLedger",
    "Refusal",
    "Sizer",
    "Store",
    "UsageRow",
    "default_usage_db",
    "fixed",
    "is_server_url",
    "open_store",
    "tightest",
    "to_frame",
]

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
    "batch": "string",
    "user": "string",
    "host": "string",
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
    #: Prompt tokens the provider served from its prompt cache (priced at its cached rate).
    cached_tokens: int | None = None
    #: True when the token counts were counted locally, not reported by the provider.
    tokens_estimated: bool = False
    cost_usd: float = math.nan
    latency_s: float = 0.0
    attempts: int = 1
    status: str = "ok"
    error: str | None = None
    #: The ``ipyllm.map`` batch this call belongs to (None for single calls).
    batch: str | None = None
    user: str | None = None
    host: str | None = None

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


assert [f.name for f in fields(UsageRow)] == list(COLUMNS), "UsageRow and COLUMNS must agree"
_as_tuple = attrgetter(*COLUMNS)


@dataclass(frozen=True)
class Hold:
    """A budget reservation: the estimated cost of one call in flight, counted as spent until the call's
    row settles it. ``expires`` bounds it, so a hold left by a kernel that died never blocks a budget."""

    id: str
    amount: float
    session: str
    user: str | None
    host: str | None
    pid: int
    created: datetime
    expires: datetime


@dataclass(frozen=True)
class Limit:
    """A spending limit checked against the ledger: spend since ``since`` (of ``user`` only, when set)."""

    setting: str
    limit: float
    since: datetime
    user: str | None = None


@dataclass(frozen=True)
class Headroom:
    """What a limit leaves for one more call: the spend recorded against it (rows) and the holds of calls in
    flight (their sum and how many), as read in the transaction that takes the next hold.

    On a ledger others write to, ``team`` and ``by_user`` (today's spend of everyone and of the hold's user,
    holds included) when the store knows them. A refusal is the headroom that was too small.
    """

    limit: Limit
    spent: float
    held: float = 0.0
    holds: int = 0
    team: float | None = None
    by_user: float | None = None

    @property
    def left(self) -> float:
        """USD the limit leaves once the holds in flight are counted as spent."""
        return self.limit.limit - self.spent - self.held


#: A refusal is the headroom that could not pay for the call.
Refusal = Headroom

#: Sizes a hold from the headroom every limit leaves: the USD to hold, or None to refuse.
Sizer = Callable[[Sequence[Headroom]], float | None]


def fixed(amount: float) -> Sizer:
    """A sizer for a hold of a known amount: held when it fits every headroom."""

    def size(rooms: Sequence[Headroom]) -> float | None:
        return amount if all(amount <= room.left + 1e-12 for room in rooms) else None

    return size


def tightest(rooms: Sequence[Headroom]) -> Headroom:
    """The headroom that leaves the least."""
    return min(rooms, key=lambda room: room.left)


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


class MemoryLedger:
    """This session's rows, in call order; safe to append from several threads.

    ``subscribe(callback)`` calls ``callback(row)`` after each append (from the appending thread) and
    returns a function that unsubscribes.
    """

    def __init__(self) -> None:
        self._rows: list[UsageRow] = []
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[UsageRow], object]] = []

    def append(self, row: UsageRow) -> None:
        with self._lock:
            self._rows.append(row)
            if not math.isnan(row.cost_usd):
                self._spent[row.session] = self._spent.get(row.session, 0.0) + row.cost_usd
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(row)
            except Exception as error:  # a broken display must not break the call that was recorded
                notice(f"a usage listener failed: {error!r}")

    def rows(self, session: str | None = None) -> list[UsageRow]:
        with self._lock:
            rows = list(self._rows)
        return rows if session is None else [r for r in rows if r.session == session]

    def subscribe(self, callback: Callable[[UsageRow], object]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def spend(self, since: datetime | None = None, *, session: str | None = None, user: str | None = None) -> float:
        """USD recorded in memory (since ``since``; of ``session`` / ``user`` only), unknown prices counted as 0.

        A session's total is kept as rows arrive, so the per-call budget check does not rescan the rows.
        """
        if since is None and user is None:
            with self._lock:
                return sum(self._spent.values()) if session is None else self._spent.get(session, 0.0)
        return sum(
            r.cost_usd
            for r in self.rows(session)
            if not math.isnan(r.cost_usd) and (since is None or r.timestamp >= since) and (user is None or r.user == user)
        )

    def __len__(self) -> int:
        return len(self._rows)


# -- the frame -----------------------------------------------------------------------------------------


def frame_from_columns(columns: dict[str, Sequence[Any]], timestamps_in_micros: bool = False) -> pd.DataFrame:
    """Build the usage frame from column lists (the fast path for 100,000 rows)."""
    import numpy as np
    import pandas as pd

    data: dict[str, Any] = {}
    for name, dtype in COLUMNS.items():
        values = columns[name]
        if name == "timestamp":
            micros = np.asarray(values if timestamps_in_micros else [_micros(v) for v in values], dtype="int64")
            data[name] = pd.to_datetime(micros, unit="us", utc=True).as_unit("ns")
        elif dtype == "float64":
            data[name] = np.asarray([math.nan if v is None else v for v in values], dtype="float64")
        else:
            data[name] = pd.array(list(values), dtype=dtype)
    return pd.DataFrame(data, columns=list(COLUMNS))


def to_frame(rows: Iterable[UsageRow]) -> pd.DataFrame:
    """The usage frame of SPEC section 5: exact columns and dtypes, also when there are no rows."""
    records = [_as_tuple(r) for r in rows]
    columns = list(zip(*records, strict=True)) if records else [() for _ in COLUMNS]
    return frame_from_columns(dict(zip(COLUMNS, columns, strict=True)))


# -- facts every backend shares ------------------------------------------------------------------------


def default_usage_db() -> Path:
    """``ipyllm/usage.sqlite`` under the user's Jupyter data directory."""
    try:
        from jupyter_core.paths import jupyter_data_dir

        base = Path(jupyter_data_dir())
    except ImportError:  # jupyter_core's own rules, for a plain IPython without Jupyter
        if os.environ.get("JUPYTER_DATA_DIR"):
            base = Path(os.environ["JUPYTER_DATA_DIR"])
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Jupyter"
        elif os.name == "nt":
            base = Path(os.environ.get("APPDATA", Path.home())) / "jupyter"
        else:
            base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "jupyter"
    return base / "ipyllm" / "usage.sqlite"


_COST = list(COLUMNS).index("cost_usd")


def row_values(row: UsageRow) -> list[Any]:
    """A row as the ledger stores it: the timestamp in microseconds, an unknown cost as NULL."""
    values = list(_as_tuple(row))
    values[0] = _micros(row.timestamp)
    if isinstance(values[_COST], float) and math.isnan(values[_COST]):
        values[_COST] = None
    return values


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


#: A response cache entry: key, kind, model, payload (JSON text).
CacheEntry = tuple[str, str, str, str]


class Store(Protocol):
    """A persistent ledger: usage rows, budget holds and the response cache. Every method raises
    ``LedgerUnavailableError`` (one line, saying what to do) when the store cannot be used."""

    #: How the store is named to the user (a path, or a URL without its password).
    name: str
    #: True for a ledger shared by a team (a server): the picker then shows the team's spend today.
    shared: bool

    def append(self, row: UsageRow, release: str | None = None) -> None: ...
    def append_many(self, rows: Sequence[UsageRow], entries: Sequence[CacheEntry] = ()) -> None:
        """Several rows (no holds to settle) and cache entries, committed together: a batch's writer."""
        ...

    def reserve(self, hold: Hold, limits: Sequence[Limit], size: Sizer | None = None) -> Hold | Refusal:
        """In one transaction, read what each of ``limits`` leaves (rows and live holds of every kernel) and take
        ``hold`` with the amount ``size`` gives for those headrooms (default: ``hold.amount`` if it fits);
        return the hold taken, or the tightest headroom when ``size`` refuses."""
        ...

    def release(self, hold_id: str) -> None: ...
    def spend(self, since: datetime, exclude_session: str | None = None, user: str | None = None) -> float: ...
    def frame(self, exclude_session: str | None = None) -> pd.DataFrame: ...
    def cache_get(self, key: str) -> str | None: ...
    def cache_get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The payloads of those of ``keys`` that are cached: a batch looks up its rows ahead, many at once."""
        ...

    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None: ...
    def close(self) -> None: ...


# -- choosing the backend --------------------------------------------------------------------------------

_SERVER_SCHEMES = ("postgresql://", "postgres://")


def is_server_url(name: str | None) -> bool:
    """True for a PostgreSQL URL (``postgresql://user@host:5432/dbname``)."""
    return name is not None and name.strip().lower().startswith(_SERVER_SCHEMES)


def store_key(usage_db: str | None) -> str:
    """The ledger's key in the session: a file's full path; a URL without its password, and a digest of it."""
    if is_server_url(usage_db):
        import hashlib

        from ipyllm._config import LedgerURL, plain_text

        url = LedgerURL(plain_text(usage_db) if isinstance(usage_db, str) else "")
        # Another password is another store (the old one may have been refused); the digest never shows.
        return f"{url.masked()}#{hashlib.sha256(url.reveal().encode()).hexdigest()[:12]}"
    return str(Path(usage_db).expanduser()) if usage_db else str(default_usage_db())


def open_store(usage_db: str | None) -> Store | None:
    """The store ``usage_db`` names: None for ``:memory:``, the PostgreSQL server for a URL, else a SQLite file.

    Nothing is connected or opened yet: that happens on first use.
    """
    if usage_db == ":memory:":
        return None
    if is_server_url(usage_db):
        from ipyllm._config import LedgerURL, plain_text
        from ipyllm._postgres import PostgresStore

        return PostgresStore(usage_db if isinstance(usage_db, LedgerURL) else LedgerURL(plain_text(usage_db or "")))
    from ipyllm._sqlite import SQLiteStore

    return SQLiteStore(store_key(usage_db))


def __getattr__(name: str) -> Any:
    # The SQLite store lived here; its names are still found here, imported on first use.
    if name in ("SQLiteStore", "MIGRATIONS", "SCHEMA_VERSION"):
        from ipyllm import _sqlite

        return getattr(_sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
