"""The SQLite ledger: usage rows, budget holds and the response cache in one file.

Every row is committed as its call ends, one insert per call, in WAL mode with a busy timeout, so several
kernels can share one file and a killed kernel loses no finished call. A file that cannot be opened or
written (corrupt, locked, read-only) never breaks a call: it says so once, in one line, and the rows stay
in memory.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipyllm._ledger import (
    COLUMNS,
    CacheEntry,
    Headroom,
    Hold,
    LedgerUnavailableError,
    Limit,
    Refusal,
    Sizer,
    UsageRow,
    _micros,
    _now,
    _process_alive,
    fixed,
    frame_from_columns,
    row_values,
    tightest,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]

_ROW_COLUMNS = ", ".join(["timestamp_us", *list(COLUMNS)[1:]])
_INSERT_ROW = f"INSERT INTO usage ({_ROW_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))})"
_PUT_CACHE = "INSERT OR REPLACE INTO cache (key, created_us, kind, model, payload) VALUES (?, ?, ?, ?, ?)"


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


class SQLiteStore:
    """The persistent ledger (and the response cache) in one SQLite file.

    Opened on first use. Every method raises ``LedgerUnavailableError`` with a one-line explanation when the
    file cannot be used; callers keep rows in memory instead.
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.shared = False
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

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the store's lock (kernels sharing the file write one at a
        time): committed when the block ends, unless it rolled back itself; rolled back on any error. SQLite's
        errors become ``LedgerUnavailableError``."""
        with self._lock:
            connection = self._connect()
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                    if connection.in_transaction:
                        connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise self._unavailable(error) from error

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
        if release is None:
            self._run(_INSERT_ROW, values)
            return
        with self._transaction() as connection:
            connection.execute(_INSERT_ROW, values)
            connection.execute("DELETE FROM holds WHERE id = ?", [release])

    def append_many(self, rows: Sequence[UsageRow], entries: Sequence[CacheEntry] = ()) -> None:
        """Rows and cache entries in one transaction: one commit for all that a batch's writer found waiting."""
        values = [row_values(row) for row in rows]
        created = _micros(_now())
        cached = [(key, created, kind, model, payload) for key, kind, model, payload in entries]
        with self._transaction() as connection:
            connection.executemany(_INSERT_ROW, values)
            connection.executemany(_PUT_CACHE, cached)

    # -- budgets ---------------------------------------------------------------------------------------
    def reserve(self, hold: Hold, limits: Sequence[Limit], size: Sizer | None = None) -> Hold | Refusal:
        """Take ``hold``, sized by ``size`` from what each of ``limits`` leaves with the rows and live holds of every
        kernel; or refuse it (the tightest headroom).

        One ``BEGIN IMMEDIATE`` transaction: kernels sharing the file take holds one at a time, so together
        they cannot pass a limit. Holds of processes on this host that have died are dropped first.
        """
        now = _micros(_now())
        with self._transaction() as connection:
            self._drop_dead_holds(connection, hold.host, now)
            rooms = [self._headroom(connection, limit, now) for limit in limits]
            amount = (size or fixed(hold.amount))(rooms)
            if amount is None:
                connection.execute("ROLLBACK")
                return tightest(rooms)
            hold = replace(hold, amount=amount)
            connection.execute(
                "INSERT INTO holds (id, session, user, host, pid, amount, created_us, expires_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [hold.id, hold.session, hold.user, hold.host, hold.pid, hold.amount, _micros(hold.created), _micros(hold.expires)],
            )
        return hold

    def release(self, hold_id: str) -> None:
        """Drop a hold whose call left no row to settle it (it failed before sending)."""
        self._run("DELETE FROM holds WHERE id = ?", [hold_id])

    @staticmethod
    def _headroom(connection: sqlite3.Connection, limit: Limit, now: int) -> Headroom:
        """What ``limit`` leaves: the rows since its start and the live holds (of its user, for a user's limit)."""
        user_filter = "" if limit.user is None else " AND user = ?"
        extra = [] if limit.user is None else [limit.user]
        spent = connection.execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE timestamp_us >= ?{user_filter}", [_micros(limit.since), *extra]
        ).fetchone()
        held, holds = connection.execute(
            f"SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM holds WHERE expires_us > ?{user_filter}", [now, *extra]
        ).fetchone()
        return Headroom(limit, float(spent[0]), float(held), int(holds))

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

    def cache_get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):  # well under SQLite's limit on parameters
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            found.update(self._run(f"SELECT key, payload FROM cache WHERE key IN ({marks})", chunk))
        return found

    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None:
        self._run(_PUT_CACHE, [key, _micros(_now()), kind, model, payload])
