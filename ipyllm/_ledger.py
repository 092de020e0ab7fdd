"""Usage rows: one per logical call, kept in memory and in a SQLite ledger, read as a pandas frame.

Knows nothing of litellm. ``MemoryLedger`` holds this session's rows (always complete, whatever happens
to the file); ``SQLiteStore`` persists every row as its call ends, one committed insert per call, in WAL
mode with a busy timeout, so several kernels can share one file and a killed kernel loses no finished
call. A store that cannot be opened or written (corrupt, locked, read-only) never breaks a call: it says
so once, in one line, and the rows stay in memory.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "Hold", "Limit", "MemoryLedger", "Refusal", "SQLiteStore", "Store", "UsageRow", "default_usage_db", "to_frame"]

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
class Refusal:
    """The limit a hold would pass, and what was spent (rows and holds) against it."""

    limit: Limit
    spent: float


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
                print(f"ipyllm: a usage listener failed: {error!r}", file=sys.stderr)

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


# -- the SQLite ledger ---------------------------------------------------------------------------------


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


_ROW_COLUMNS = ", ".join(["timestamp_us", *list(COLUMNS)[1:]])
_INSERT_ROW = f"INSERT INTO usage ({_ROW_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))})"
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


#: Schema migrations: entry n takes the ledger from version n to n + 1 (``PRAGMA user_version``).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE IF NOT EXISTS usage (
            id INTEGER PRIMARY KEY,
            timestamp_us INTEGER NOT NULL,
            session TEXT, cell INTEGER, source TEXT, kind TEXT, model TEXT, provider TEXT,
            prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,
            cost_usd REAL, latency_s REAL, attempts INTEGER, status TEXT, error TEXT)""",
        "CREATE INDEX IF NOT EXISTS usage_timestamp ON usage (timestamp_us)",
        "CREATE INDEX IF NOT EXISTS usage_session ON usage (session)",
    ),
    (
        """CREATE TABLE IF NOT EXISTS cache (
            key TEXT PRIMARY KEY, created_us INTEGER NOT NULL, kind TEXT, model TEXT, payload TEXT NOT NULL)""",
    ),
    (
        "ALTER TABLE usage ADD COLUMN cached_tokens INTEGER",
        "ALTER TABLE usage ADD COLUMN tokens_estimated INTEGER",
        "ALTER TABLE usage ADD COLUMN batch TEXT",
        "ALTER TABLE usage ADD COLUMN user TEXT",
        "ALTER TABLE usage ADD COLUMN host TEXT",
        "CREATE INDEX IF NOT EXISTS usage_user ON usage (user, timestamp_us)",
        # Budget holds of calls in flight, in every kernel writing this ledger (see Hold).
        """CREATE TABLE IF NOT EXISTS holds (
            id TEXT PRIMARY KEY, session TEXT, user TEXT, host TEXT, pid INTEGER,
            amount REAL NOT NULL, created_us INTEGER NOT NULL, expires_us INTEGER NOT NULL)""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


class LedgerUnavailableError(Exception):
    """The ledger cannot be used; the message says what to do."""


class Store(Protocol):
    """A persistent ledger: usage rows, budget holds and the response cache. Every method raises
    ``LedgerUnavailableError`` (one line, saying what to do) when the store cannot be used."""

    #: How the store is named to the user (a path, or a URL without its password).
    name: str

    def append(self, row: UsageRow, release: str | None = None) -> None: ...
    def reserve(self, hold: Hold, limits: Sequence[Limit]) -> Refusal | None: ...
    def release(self, hold_id: str) -> None: ...
    def spend(self, since: datetime, exclude_session: str | None = None, user: str | None = None) -> float: ...
    def frame(self, exclude_session: str | None = None) -> pd.DataFrame: ...
    def cache_get(self, key: str) -> str | None: ...
    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None: ...
    def close(self) -> None: ...


class SQLiteStore:
    """The persistent ledger (and the response cache) in one SQLite file.

    Opened on first use. Every method raises ``LedgerUnavailableError`` with a one-line explanation when the
    file cannot be used; callers keep rows in memory instead.
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- connection ------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            self._migrate(connection)
        except (sqlite3.Error, OSError) as error:
            raise self._unavailable(error) from error
        self._connection = connection
        return connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this ipyllm's {SCHEMA_VERSION}: upgrade ipyllm")
        if version == SCHEMA_VERSION:
            return
        # BEGIN IMMEDIATE: two kernels opening a new ledger at once migrate it once.
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _unavailable(self, error: BaseException) -> LedgerUnavailableError:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "readonly" in reason or "read-only" in reason or isinstance(error, PermissionError):
            advice = "make it writable or set LLM_USAGE_DB to a writable file"
        elif "locked" in reason or "busy" in reason:
            advice = "another program holds it; close it or set LLM_USAGE_DB to another file"
        elif "not a database" in reason or "malformed" in reason:
            advice = "move the broken file away or set LLM_USAGE_DB to another file"
        else:
            advice = "set LLM_USAGE_DB to a file that can be written"
        return LedgerUnavailableError(
            f"cannot use the usage ledger {self.path} ({reason}): rows are kept in memory for this session; {advice}"
        )

    def _run(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            connection = self._connect()
            try:
                return connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise self._unavailable(error) from error

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- usage rows ------------------------------------------------------------------------------------
    def append(self, row: UsageRow, release: str | None = None) -> None:
        """Insert one row, committed at once; the hold ``release`` (the call's reservation) goes in the same transaction."""
        values = row_values(row)
        with self._lock:
            connection = self._connect()
            try:
                if release is None:
                    connection.execute(_INSERT_ROW, values)
                    return
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.execute(_INSERT_ROW, values)
                    connection.execute("DELETE FROM holds WHERE id = ?", [release])
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise self._unavailable(error) from error

    # -- budgets ---------------------------------------------------------------------------------------
    def reserve(self, hold: Hold, limits: Sequence[Limit]) -> Refusal | None:
        """Take ``hold`` unless, with the rows and live holds of every kernel, it would pass one of ``limits``.

        One ``BEGIN IMMEDIATE`` transaction: kernels sharing the file take holds one at a time, so together
        they cannot pass a limit. Holds of processes on this host that have died are dropped first.
        """
        now = _micros(_now())
        with self._lock:
            connection = self._connect()
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    self._drop_dead_holds(connection, hold.host, now)
                    for limit in limits:
                        spent = self._spent(connection, limit.since, limit.user, now)
                        if spent + hold.amount > limit.limit:
                            connection.execute("ROLLBACK")
                            return Refusal(limit, spent)
                    connection.execute(
                        "INSERT INTO holds (id, session, user, host, pid, amount, created_us, expires_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [hold.id, hold.session, hold.user, hold.host, hold.pid, hold.amount, _micros(hold.created), _micros(hold.expires)],
                    )
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise self._unavailable(error) from error
        return None

    def release(self, hold_id: str) -> None:
        """Drop a hold whose call left no row to settle it (it failed before sending)."""
        self._run("DELETE FROM holds WHERE id = ?", [hold_id])

    @staticmethod
    def _spent(connection: sqlite3.Connection, since: datetime, user: str | None, now: int) -> float:
        user_filter = "" if user is None else " AND user = ?"
        extra = [] if user is None else [user]
        rows = connection.execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE timestamp_us >= ?{user_filter}", [_micros(since), *extra]
        ).fetchone()
        held = connection.execute(f"SELECT COALESCE(SUM(amount), 0) FROM holds WHERE expires_us > ?{user_filter}", [now, *extra]).fetchone()
        return float(rows[0]) + float(held[0])

    @staticmethod
    def _drop_dead_holds(connection: sqlite3.Connection, host: str | None, now: int) -> None:
        connection.execute("DELETE FROM holds WHERE expires_us <= ?", [now])
        for hold_id, pid in connection.execute("SELECT id, pid FROM holds WHERE host IS ?", [host]).fetchall():
            if pid and not _process_alive(int(pid)):
                connection.execute("DELETE FROM holds WHERE id = ?", [hold_id])

    def frame(self, exclude_session: str | None = None) -> pd.DataFrame:
        """Every row in the ledger (but ``exclude_session``'s), oldest first, as the usage frame."""
        where, parameters = ("WHERE session IS NOT ?", [exclude_session]) if exclude_session else ("", [])
        records = self._run(f"SELECT {_ROW_COLUMNS} FROM usage {where} ORDER BY timestamp_us, id", parameters)
        columns = list(zip(*records, strict=True)) if records else [() for _ in COLUMNS]
        return frame_from_columns(dict(zip(COLUMNS, columns, strict=True)), timestamps_in_micros=True)

    def spend(self, since: datetime, exclude_session: str | None = None, user: str | None = None) -> float:
        """USD recorded since ``since`` (of ``user`` only, when given; unknown prices count as 0)."""
        rows = self._run(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE timestamp_us >= ? AND session IS NOT ? AND (? IS NULL OR user = ?)",
            [_micros(since), exclude_session, user, user],
        )
        return float(rows[0][0])

    def count(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM usage")[0][0])

    # -- the response cache ----------------------------------------------------------------------------
    def cache_get(self, key: str) -> str | None:
        rows = self._run("SELECT payload FROM cache WHERE key = ?", [key])
        return rows[0][0] if rows else None

    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None:
        self._run(
            "INSERT OR REPLACE INTO cache (key, created_us, kind, model, payload) VALUES (?, ?, ?, ?, ?)",
            [key, _micros(_now()), kind, model, payload],
        )
