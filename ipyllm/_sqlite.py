"""The SQLite ledger: usage rows, budget holds and the response cache in one file.

Every row is committed as its call ends, one insert per call, in WAL mode with a busy timeout, so several
kernels can share one file and a killed kernel loses no finished call. Each row has a unique id (``uid``),
so a row written twice is stored once. The file is watched (``ipyllm._sqlfile``): one that vanishes while
in use is recreated with all it held, and one that cannot be written never breaks a call: it says so once,
in one line, and its rows wait in a local spool (and in memory) until it can be written again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipyllm._framecache import FrameCache
from ipyllm._framechunks import PUT
from ipyllm._framefile import identity_of
from ipyllm._locations import SQLiteFile
from ipyllm._spool import SpooledEntry
from ipyllm._sqlbatches import FileBatches
from ipyllm._sqlfile import LedgerFile
from ipyllm._sqlschema import INSERT_ROW, MIGRATIONS, PUT_CACHE, SCHEMA_VERSION, Entry, apply, committed, new_uid
from ipyllm._store import CacheEntry, Headroom, Hold, Limit, Refusal, Sizer, fixed, process_alive, tightest
from ipyllm._usage import UsageRow, frame_from_columns, micros, row_values, utc_now
from ipyllm._views import Window, column_list
from ipyllm.errors import LedgerUnavailableError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore"]


class SQLiteStore(FileBatches):
    """The persistent ledger (and the response cache) in one SQLite file, watched.

    Opened on first use. While the file cannot be written, rows and cache entries wait in a spool. A file that
    is not a ledger makes every method raise ``LedgerUnavailableError`` with a one-line explanation; callers
    keep rows in memory instead.

    Parameters
    ----------
    location
        The ledger file.
    busy_timeout
        Seconds a write waits for another kernel's.
    spool
        Where rows wait while the file cannot be written (default: ``ipyllm/spool/`` in the Jupyter data directory).
    """

    def __init__(self, location: SQLiteFile, busy_timeout: float = 5.0, spool: Path | None = None) -> None:
        self.location = location
        self.path = location.path
        self.name = str(location)
        self.shared = False
        self.dialect = "sqlite"
        self.busy_timeout = busy_timeout
        #: The file, watched: its connection, its spool and its lock.
        self.file = LedgerFile(location, busy_timeout, spool)
        self._lock = self.file.lock
        #: The frames read, kept and extended with the rows added since (and the whole ledger's kept on disk).
        self.frames = FrameCache(self, identity_of(location), chunks=True)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.name!r})"

    @property
    def last_said(self) -> str:
        """The line said when the latest outage began ("" before any)."""
        return self.file.last_said

    # -- connection ------------------------------------------------------------------------------------
    def _connect(self, retry_now: bool = False) -> sqlite3.Connection:
        return self.file.connect(retry_now)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the store's lock (kernels sharing the file write one at a
        time): committed when the block ends, unless it rolled back itself; rolled back on any error. SQLite's
        errors become ``LedgerUnavailableError``."""
        with self._lock:
            connection = self._connect()
            try:
                with committed(connection):
                    yield connection
            except sqlite3.Error as error:
                raise self.file.failed(error) from error

    def _run(self, sql: str, parameters: Sequence[Any] = (), retry_now: bool = False) -> list[tuple[Any, ...]]:
        with self._lock:
            connection = self._connect(retry_now)
            try:
                return connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise self.file.failed(error) from error

    def _write(self, entries: Sequence[Entry], cache: Sequence[SpooledEntry] = ()) -> None:
        """Rows (uid, the hold each settles, values) and cache entries, committed together; while the file cannot
        be written, into the spool instead."""
        with self._lock:
            try:
                connection = self._connect()
                try:
                    if len(entries) == 1 and not cache and entries[0][1] is None:  # the usual call: one autocommitted insert
                        uid, _, values = entries[0]
                        connection.execute(INSERT_ROW, [uid, *(values or ())])
                    elif len(cache) == 1 and not entries:
                        connection.execute(PUT_CACHE, cache[0])
                    else:
                        with committed(connection):
                            apply(connection, entries, cache)
                except sqlite3.Error as error:
                    raise self.file.failed(error) from error
            except LedgerUnavailableError as error:
                if not error.said:
                    raise
                self.file.keep(entries, cache)

    def close(self) -> None:
        """Write what waits (a vanished file's rows, the spool), if the file can be written now; then close it."""
        self.frames.close()
        self.file.close()

    # -- usage rows ------------------------------------------------------------------------------------
    def append(self, row: UsageRow, release: str | None = None) -> None:
        """Insert one row, committed at once; the hold ``release`` (the call's reservation) goes in the same transaction."""
        self._write([(new_uid(), release, row_values(row))])
        self.frames.written()

    def append_many(self, rows: Sequence[UsageRow], entries: Sequence[CacheEntry] = ()) -> None:
        """Rows and cache entries in one transaction: one commit for all that a batch's writer found waiting."""
        created = micros(utc_now())
        cached = [(key, created, kind, model, payload) for key, kind, model, payload in entries]
        self._write([(new_uid(), None, row_values(row)) for row in rows], cached)
        self.frames.written(len(rows))

    # -- budgets ---------------------------------------------------------------------------------------
    def reserve(self, hold: Hold, limits: Sequence[Limit], size: Sizer | None = None) -> Hold | Refusal:
        """Take ``hold``, sized by ``size`` from what each of ``limits`` leaves with the rows and live holds of every
        kernel; or refuse it (the tightest headroom).

        One ``BEGIN IMMEDIATE`` transaction: kernels sharing the file take holds one at a time, so together
        they cannot pass a limit. Holds of processes on this host that have died are dropped first.
        """
        now = micros(utc_now())
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
                [hold.id, hold.session, hold.user, hold.host, hold.pid, hold.amount, micros(hold.created), micros(hold.expires)],
            )
        return hold

    def release(self, hold_id: str) -> None:
        """Drop a hold whose call left no row to settle it (it failed before sending)."""
        self._write([(new_uid(), hold_id, None)])

    @staticmethod
    def _headroom(connection: sqlite3.Connection, limit: Limit, now: int) -> Headroom:
        """What ``limit`` leaves: the rows since its start and the live holds (of its user, for a user's limit)."""
        user_filter = "" if limit.user is None else " AND user = ?"
        extra = [] if limit.user is None else [limit.user]
        spent = connection.execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE timestamp_us >= ?{user_filter}", [micros(limit.since), *extra]
        ).fetchone()
        held, holds = connection.execute(
            f"SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM holds WHERE expires_us > ?{user_filter}", [now, *extra]
        ).fetchone()
        return Headroom(limit, float(spent[0]), float(held), int(holds))

    @staticmethod
    def _drop_dead_holds(connection: sqlite3.Connection, host: str | None, now: int) -> None:
        connection.execute("DELETE FROM holds WHERE expires_us <= ?", [now])
        for hold_id, pid in connection.execute("SELECT id, pid FROM holds WHERE host IS ?", [host]).fetchall():
            if pid and not process_alive(int(pid)):
                connection.execute("DELETE FROM holds WHERE id = ?", [hold_id])

    def frame(self, exclude_session: str | None = None, window: Window | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows in the ledger (but ``exclude_session``'s; of ``window`` only, filtered in SQL), oldest first, as the
        usage frame (of ``columns`` only, and the time): the frame last read, extended with the rows added since
        (``_framecache``)."""
        return self.frames.frame(exclude_session, window, columns)

    def frame_rows(self, where: str, parameters: Sequence[Any], names: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
        """The rows of ``where``, ordered by time, then id: their ids and their frame of ``names``."""
        import numpy as np

        records = self._run(f"SELECT id, {column_list(names)} FROM usage{where} ORDER BY timestamp_us, id", parameters, retry_now=True)
        ids, *values = list(zip(*records, strict=True)) if records else [() for _ in range(len(names) + 1)]
        return np.asarray(ids, dtype="int64"), frame_from_columns(dict(zip(names, values, strict=True)), timestamps_in_micros=True)

    def spend(self, since: datetime, exclude_session: str | None = None, user: str | None = None) -> float:
        """USD recorded since ``since`` (of ``user`` only, when given; unknown prices count as 0)."""
        rows = self._run(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE timestamp_us >= ? AND session IS NOT ? AND (? IS NULL OR user = ?)",
            [micros(since), exclude_session, user, user],
            retry_now=True,
        )
        return float(rows[0][0])

    def count(self) -> int:
        return int(self._run("SELECT COUNT(*) FROM usage", retry_now=True)[0][0])

    def put_chunk(self, values: Sequence[Any]) -> None:
        """Keep a chunk of packed rows (``_framechunks.PUT``). An error is the packer's alone (it tries again later): not
        an outage of the ledger, which its rows would be spooled for."""
        with self._lock:
            self._connect().execute(PUT, values)

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only query (``?`` placeholders), for the ledger's views (``ipyllm._views``)."""
        return self._run(sql, parameters, retry_now=True)

    # -- the response cache ----------------------------------------------------------------------------
    def cache_get(self, key: str) -> str | None:
        return self.cache_get_many([key]).get(key)

    def cache_get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The cached payloads of ``keys``; while the file cannot be written, the spooled answers too."""
        with self._lock:
            return self.file.cached(keys)

    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None:
        self._write((), [(key, micros(utc_now()), kind, model, payload)])
