"""The team ledger on a PostgreSQL server: every kernel of a team writes its rows to one database.

``usage_db = "postgresql://user@host:5432/dbname"`` (password from the URL, ``PGPASSWORD`` or ``~/.pgpass``;
never shown). The schema is the SQLite ledger's, versioned in a ``schema_version`` table and migrated
forward under an advisory lock, so many kernels starting at once migrate it once. Budget holds are taken
in one transaction under an advisory lock, so kernels on many machines take them one at a time and cannot
together pass a limit.

A row is committed first to a local spool file (``ipyllm._spool``), then written to the server by a
writer thread, in order, with a unique id (a row written twice is stored once): a call never waits for
the server, and a kernel killed meanwhile loses nothing. The server may be down, unreachable, refuse the
password or be read-only: no call breaks, rows wait in the spool, and the writer tries again with growing
waits. Meanwhile budgets count the spend last read from the server plus this kernel's calls since. One
line says when the server is lost and one when it is back. psycopg (3) is imported only when such a URL is
configured and the store connects.

The store is the ``Store`` protocol over three parts: ``_pglink`` (connections and the outage state),
``_pgwriter`` (the spool's writer thread) and ``_pgbudget`` (the holds, on the server and while it is away).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipyllm._framecache import FrameCache
from ipyllm._framechunks import PUT
from ipyllm._framefile import identity_of
from ipyllm._locations import Server
from ipyllm._pgbatches import ServerBatches
from ipyllm._pgbudget import TeamBudgets
from ipyllm._pglink import ServerLink, driver_errors
from ipyllm._pgschema import MIGRATIONS, SCHEMA_VERSION, csv_frame
from ipyllm._pgwriter import SpoolWriter
from ipyllm._spool import Spool, spool_path
from ipyllm._store import CacheEntry, Hold, Limit, Refusal, Sizer, fixed
from ipyllm._usage import UsageRow, micros, row_values, utc_now
from ipyllm._views import Window, column_list
from ipyllm.errors import LedgerUnavailableError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]


class PostgresStore(ServerBatches):
    """The ledger (rows, holds, the response cache) in a PostgreSQL database, with a local spool for outages.

    Made of three parts that share one lock: the link to the server and its outage state (``_pglink``), the
    spool's writer thread (``_pgwriter``), and the budgets' holds (``_pgbudget``); the records of provider batches
    and map claims are kept by ``_pgbatches``.

    Parameters
    ----------
    server
        The database (``postgresql://user[:password]@host[:port]/dbname`` parsed); its password is revealed only to connect.
    spool
        The local file rows wait in while the server cannot be reached (default: beside the default ledger).
    connect_timeout
        Seconds one connection attempt may take (libpq's minimum is 2).
    """

    def __init__(self, server: Server, spool: Path | None = None, connect_timeout: int = 2) -> None:
        self.server = server
        self.name = str(server)  # the password masked
        self.shared = True
        self.dialect = "postgresql"
        self.spool = Spool(spool or spool_path(server))
        self.link = ServerLink(server, self.spool, connect_timeout)
        self.budgets = TeamBudgets(self.link)
        self.writer = SpoolWriter(self.link, self.spool, self.budgets.settled)
        self._lock = self.link.lock
        #: The frames read, kept and extended with the rows added since (and the whole ledger's kept on disk).
        self.frames = FrameCache(self, identity_of(server), chunks=True)

    def __repr__(self) -> str:
        return f"PostgresStore({self.name!r})"

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the rows of this kernel are on the server (at most ``timeout`` s; not at all while it is away)."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        """Write what waits (briefly, if the server is there), then stop the writer and disconnect."""
        self.frames.close()
        if not self.link.closed:
            self.flush(2.0)
        with self._lock:
            self.link.close()
        self.writer.stop()

    def _unreachable(self, what: str) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"cannot read the team ledger {self.name} ({self.link.reason or 'unreachable'}): {what}; it is tried again in the background",
            transient=True,
        )

    # -- usage rows --------------------------------------------------------------------------------------
    def append(self, row: UsageRow, release: str | None = None) -> None:
        """Keep one row in the spool (committed locally, so a killed kernel loses nothing); the writer thread puts
        it on the server, with the hold ``release`` it settles, in one statement. A call never waits for the server."""
        uid = uuid.uuid4().hex
        values = row_values(row)
        with self._lock:
            self.budgets.count(row, release)
        self.writer.keep(uid, release, values)
        self.frames.written()

    def frame(self, exclude_session: str | None = None, window: Window | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows on the server (but ``exclude_session``'s; of ``window`` only, filtered in SQL), oldest first, as the
        usage frame (of ``columns`` only, and the time): the frame last read, extended with the rows added since
        (``_framecache``)."""
        return self.frames.frame(exclude_session, window, columns)

    def frame_rows(self, where: str, parameters: Sequence[Any], names: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
        """The rows of ``where`` (``?`` placeholders), ordered by time, then id: their ids and their frame of ``names``.

        Read with ``COPY ... TO STDOUT`` as CSV and parsed by pandas' C parser: 100,000 rows in well under a
        second, where fetching them as Python tuples takes several.
        """
        buffer = io.BytesIO()
        with self._lock:
            connection = self.link.usable()
            if connection is None:
                raise self._unreachable("showing this session's rows only")
            try:
                from psycopg import sql

                # COPY takes no parameters: each is written into the statement as a quoted literal.
                text = f"SELECT id, {column_list(names)} FROM usage{where}".replace("{", "{{").replace("}", "}}").replace("?", "{}")
                with connection.cursor() as cursor:
                    copy = sql.SQL(f"COPY ({text}) TO STDOUT WITH (FORMAT csv, NULL '\\N')").format(*map(sql.Literal, parameters))
                    with cursor.copy(copy) as rows:
                        for chunk in rows:
                            buffer.write(chunk)
            except driver_errors() as error:
                self.link.lost(error)
                raise self._unreachable("showing this session's rows only") from None
        return csv_frame(buffer, names)

    def spend(self, since: datetime, exclude_session: str | None = None, user: str | None = None) -> float:
        """USD recorded since ``since`` (of ``user`` only, when given; unknown prices count as 0)."""
        rows = self._query(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE timestamp_us >= %s AND session IS DISTINCT FROM %s"
            ' AND (%s::text IS NULL OR "user" = %s)',
            [micros(since), exclude_session, user, user],
        )
        if rows is None:
            raise self._unreachable("the team's spend is not known")
        return float(rows[0][0])

    def count(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM usage", [])
        if rows is None:
            raise self._unreachable("the number of rows is not known")
        return int(rows[0][0])

    def put_chunk(self, values: Sequence[Any]) -> None:
        """Keep a chunk of packed rows (``_framechunks.PUT``); none while the server is away. Only a lost connection
        counts as the server away: a refusal (a member not allowed to write the chunks) is the packer's alone."""
        import psycopg

        with self._lock:
            connection = self.link.usable()
            if connection is None:
                return
            try:
                connection.execute(PUT.replace("?", "%s"), values)  # type: ignore[arg-type]
            except psycopg.OperationalError as error:
                self.link.lost(error)
                raise

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only query (``%s`` placeholders), for the ledger's views (``ipyllm._views``)."""
        rows = self._query(sql, parameters)
        if rows is None:
            raise self._unreachable("its figures are not known")
        return rows

    def _query(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]] | None:
        """Rows of one query, or None while the server is away."""
        with self._lock:
            connection = self.link.usable()
            if connection is None:
                return None
            try:
                return connection.execute(sql, parameters).fetchall()  # type: ignore[arg-type]
            except driver_errors() as error:
                self.link.lost(error)
                return None

    # -- budgets -----------------------------------------------------------------------------------------
    def reserve(self, hold: Hold, limits: Sequence[Limit], size: Sizer | None = None) -> Hold | Refusal:
        """Take ``hold``, sized by ``size`` from what each of ``limits`` leaves with the rows and live holds of every
        kernel; or refuse it (the tightest headroom).

        One transaction under an advisory lock: kernels on every machine take holds one at a time. While the
        server is away: the spend and holds last read, plus this kernel's holds and rows since.
        """
        size = size or fixed(hold.amount)
        with self._lock:
            connection = self.link.usable()
            if connection is not None:
                try:
                    return self.budgets.on_server(connection, hold, limits, size)
                except driver_errors() as error:
                    self.link.lost(error)
            return self.budgets.here(hold, limits, size)

    def release(self, hold_id: str) -> None:
        """Drop a hold whose call left no row to settle it (by the writer, in order with the rows)."""
        with self._lock:
            self.budgets.released(hold_id)
        self.writer.keep(uuid.uuid4().hex, hold_id, None)

    # -- the response cache (shared by the team; skipped while the server is away) ------------------------
    def cache_get(self, key: str) -> str | None:
        rows = self._query("SELECT payload FROM cache WHERE key = %s", [key])
        return rows[0][0] if rows else None

    def cache_get_many(self, keys: Sequence[str]) -> dict[str, str]:
        return dict(self._query("SELECT key, payload FROM cache WHERE key = ANY(%s)", [list(keys)]) or [])

    def append_many(self, rows: Sequence[UsageRow], entries: Sequence[CacheEntry] = ()) -> None:
        """Each row to the spool (committed locally; the server gets them in order), then the cache entries."""
        for row in rows:
            self.append(row)
        for entry in entries:
            self.cache_put(*entry)

    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None:
        self._query(
            "INSERT INTO cache (key, created_us, kind, model, payload) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET created_us = EXCLUDED.created_us, payload = EXCLUDED.payload RETURNING key",
            [key, micros(utc_now()), kind, model, payload],
        )
