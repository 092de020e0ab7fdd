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
line says when the server is lost and one when it is back. psycopg (3) is imported only here, when such
a URL is configured.
"""

from __future__ import annotations

import atexit
import io
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ipyllm._locations import Server
from ipyllm._notices import notice
from ipyllm._pgschema import (
    HEADROOM,
    INSERT_ROW,
    INSERT_SETTLING,
    LOCK_BUDGETS,
    LOCK_MIGRATE,
    LOCK_SPACE,
    MIGRATIONS,
    ROW_COLUMNS,
    SCHEMA_VERSION,
    csv_frame,
)
from ipyllm._spool import Spool, spool_path
from ipyllm._store import CacheEntry, Headroom, Hold, Limit, Refusal, Sizer, fixed, process_alive, tightest
from ipyllm._usage import UsageRow, micros, row_values, utc_now
from ipyllm.errors import LedgerUnavailableError

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]


def _errors() -> tuple[type[BaseException], ...]:
    """psycopg's errors (none when it is not installed: then no connection is ever made)."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


class PostgresStore:
    """The ledger (rows, holds, the response cache) in a PostgreSQL database, with a local spool for outages.

    Parameters
    ----------
    server
        The database (``postgresql://user[:password]@host[:port]/dbname`` parsed); its password is revealed only to connect.
    spool
        The local file rows wait in while the server cannot be reached (default: beside the default ledger).
    connect_timeout
        Seconds one connection attempt may take (libpq's minimum is 2).
    """

    #: Longest wait, in seconds, between two attempts to reach a server that is away.
    max_backoff = 10.0

    def __init__(self, server: Server, spool: Path | None = None, connect_timeout: int = 2) -> None:
        self.server = server
        self.name = str(server)  # the password masked
        self.shared = True
        self.connect_timeout = connect_timeout
        self.spool = Spool(spool or spool_path(server))
        self._lock = threading.RLock()
        self._connection: psycopg.Connection[Any] | None = None  # the foreground's: budgets, reads, the cache
        self._tried = False
        self._away = False
        self._reason = ""
        self._closed = False
        self._writer: threading.Thread | None = None
        self._pending = threading.Event()
        self._draining = threading.Lock()
        atexit.register(self._at_exit)
        # Budgets while away: the spend last read per limit, with the sequence number of holds and rows since.
        self._last_read: dict[tuple[str, int, str | None], tuple[Headroom, int]] = {}
        self._since: dict[str, tuple[int, float, str | None]] = {}
        #: Holds of this kernel's calls in flight: id -> (amount, user).
        self._live: dict[str, tuple[float, str | None]] = {}
        #: Holds whose calls ended here, their rows on the way to the server: id -> (amount held, row's cost, user).
        self._settling: dict[str, tuple[float, float, str | None]] = {}
        self._seq = 0
        self._said_offline_budget = False
        self._said_spool = False

    def __repr__(self) -> str:
        return f"PostgresStore({self.name!r})"

    # -- connection --------------------------------------------------------------------------------------
    def _open(self) -> psycopg.Connection[Any]:
        """A new connection, migrated; raises on any failure (the caller decides what it means)."""
        import psycopg

        connection = psycopg.connect(self.server.url(), connect_timeout=self.connect_timeout, autocommit=True, application_name="ipyllm")
        try:
            self._migrate(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _migrate(self, connection: psycopg.Connection[Any]) -> None:
        import psycopg

        try:
            row = connection.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
        except psycopg.errors.UndefinedTable:
            version = 0
        if version == SCHEMA_VERSION:
            return  # the usual case: read only, so a read-only server can still be read
        with connection.transaction():
            # Many kernels starting at once: one migrates, the others wait here and then find nothing to do.
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_SPACE, LOCK_MIGRATE])
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = connection.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                newer = f"the ledger's schema version {version} is newer than this ipyllm's {SCHEMA_VERSION}"
                raise LedgerUnavailableError(f"{newer}: upgrade ipyllm")
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    connection.execute(statement)
            if row is None:
                connection.execute("INSERT INTO schema_version (version) VALUES (%s)", [SCHEMA_VERSION])
            else:
                connection.execute("UPDATE schema_version SET version = %s", [SCHEMA_VERSION])

    def _usable(self) -> psycopg.Connection[Any] | None:
        """The foreground connection (caller holds the lock), or None while the server is away.

        Connects on first use, and again once the writer has found the server back: a call never waits for
        a server known to be away.
        """
        if self._connection is not None or self._closed:
            return self._connection
        if self._tried and self._away:
            return None
        self._tried = True
        try:
            connection = self._open()
            if len(self.spool):
                # Rows left by an earlier kernel (perhaps killed while the server was away) go first.
                self._drain(connection)
        except Exception as error:
            self._lost(error)
            return None
        self._connection = connection
        return connection

    def _reason_of(self, error: BaseException) -> str:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0] if lines else type(error).__name__
        if isinstance(error, ImportError):
            reason = "psycopg is not installed: pip install 'ipyllm[postgres]'"
        password = self.server.revealed_password()
        for shown in (password, quote(password, safe="")) if password else ():
            reason = reason.replace(shown, "****")
        return reason

    def _lost(self, error: BaseException, connection: psycopg.Connection[Any] | None = None) -> None:
        """The server cannot be used: say so (once per reason), and let the writer find it again."""
        with self._lock:
            for broken in (connection, self._connection):
                if broken is not None:
                    try:
                        broken.close()
                    except Exception:
                        pass
            self._connection = None
            if not self._away:  # one line per outage, whatever fails first and however often
                self._away = True
                self._reason = self._reason_of(error)
                notice(
                    f"cannot use the team ledger {self.name} ({self._reason}): rows wait in {self.spool.path} "
                    "and are written when it is back; budgets count this kernel's calls and the last spend read"
                )
        self._wake()

    def _wake(self) -> None:
        """Tell the writer there is something to write (starting it on first use)."""
        self._pending.set()
        with self._lock:
            if not self._closed and (self._writer is None or not self._writer.is_alive()):
                self._writer = threading.Thread(target=self._write, name="ipyllm-ledger-writer", daemon=True)
                self._writer.start()

    def _write(self) -> None:
        """The writer thread: moves spooled rows to the server in order; while it is away, tries again with growing waits."""
        connection: psycopg.Connection[Any] | None = None
        delay = 0.0
        while not self._closed:
            if delay:
                time.sleep(delay)
            else:
                self._pending.wait()
            if self._closed:
                break
            self._pending.clear()
            if self._away and connection is not None:  # lost in the foreground: prove it back on a new connection
                connection.close()
                connection = None
            fresh = connection is None
            try:
                if connection is None:
                    connection = self._open()
                    # A read-only server (or a standby) takes no rows: wait for a writable one.
                    if connection.execute("SHOW transaction_read_only").fetchone() == ("on",):
                        raise LedgerUnavailableError("the database is read-only")
                written = self._drain(connection)
            except Exception as error:
                self._lost(error, connection)
                connection = None
                delay = min(max(delay * 2, 0.25), self.max_backoff)
                continue
            delay = 0.0
            with self._lock:
                # Only a new connection that wrote is news that the server is back.
                back = fresh and self._away
                if back:
                    self._away, self._said_offline_budget = False, False
            if back:
                notice(f"the team ledger {self.name} is back: {written} waiting row{'s' if written != 1 else ''} written")
        if connection is not None:
            connection.close()

    def _drain(self, connection: psycopg.Connection[Any]) -> int:
        """Write the spool to the server in order, a batch per transaction; rows already there are skipped by uid."""
        written = 0
        with self._draining:
            while batch := self.spool.peek():
                with connection.transaction(), connection.cursor() as cursor:
                    for _seq, uid, release, values in batch:
                        if values is None:
                            cursor.execute("DELETE FROM holds WHERE id = %s", [release])
                        elif release is None:
                            cursor.execute(INSERT_ROW, [uid, *values])
                        else:
                            cursor.execute(INSERT_SETTLING, [release, uid, *values])
                        written += values is not None
                self.spool.drop(batch[-1][0])
                self._settled(release for _, _, release, _ in batch)
        return written

    def _settled(self, hold_ids: Any) -> None:
        """These holds' rows are on the server now. No lock: the writer calls this while it holds ``_draining``,
        which the foreground takes inside ``_lock`` (each pop is atomic)."""
        for hold_id in hold_ids:
            self._settling.pop(hold_id, None)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the rows of this kernel are on the server (at most ``timeout`` s; not at all while it is away)."""
        deadline = time.monotonic() + timeout
        while len(self.spool) and not self._away and time.monotonic() < deadline:
            self._wake()
            time.sleep(0.01)
        return not len(self.spool)

    def close(self) -> None:
        """Write what waits (briefly, if the server is there), then stop the writer and disconnect."""
        if not self._closed:
            self.flush(2.0)
        with self._lock:
            self._closed = True
            self._pending.set()
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        self.spool.close()

    def _unreachable(self, what: str) -> LedgerUnavailableError:
        return LedgerUnavailableError(
            f"cannot read the team ledger {self.name} ({self._reason or 'unreachable'}): {what}; it is tried again in the background",
            transient=True,
        )

    # -- usage rows --------------------------------------------------------------------------------------
    def append(self, row: UsageRow, release: str | None = None) -> None:
        """Keep one row in the spool (committed locally, so a killed kernel loses nothing); the writer thread puts
        it on the server, with the hold ``release`` it settles, in one statement. A call never waits for the server."""
        uid = uuid.uuid4().hex
        values = row_values(row)
        with self._lock:
            self._count(row, release)
        self._keep(uid, release, values)

    def _keep(self, uid: str, release: str | None, values: list[Any] | None) -> None:
        try:
            self.spool.put(uid, release, values)
        except Exception as error:  # the spool itself is unusable: straight to the server, else memory only
            if not self._said_spool:
                self._said_spool = True
                notice(f"cannot write the spool {self.spool.path} ({error}): rows go straight to the server or stay in memory")
            self._write_now(uid, release, values)
            return
        self._wake()

    def _write_now(self, uid: str, release: str | None, values: list[Any] | None) -> None:

        with self._lock:
            connection = self._usable()
            if connection is None:
                return
            try:
                if values is None:
                    connection.execute("DELETE FROM holds WHERE id = %s", [release])
                elif release is None:
                    connection.execute(INSERT_ROW, [uid, *values])
                else:
                    connection.execute(INSERT_SETTLING, [release, uid, *values])
            except _errors() as error:
                self._lost(error)
            else:
                self._settled([release])

    def _at_exit(self) -> None:
        """A kernel or script that ends writes what waits, if the server is there (else the next one will)."""
        if self._closed or self._away or not len(self.spool):
            return
        try:
            with self._lock:
                connection = self._usable()
            if connection is not None:
                self._drain(connection)
        except Exception:
            pass  # still in the spool: the next kernel writes it

    def frame(self, exclude_session: str | None = None) -> pd.DataFrame:
        """Every row on the server (but ``exclude_session``'s), oldest first, as the usage frame.

        Read with ``COPY ... TO STDOUT`` as CSV and parsed by pandas' C parser: 100,000 rows in well under a
        second, where fetching them as Python tuples takes several.
        """
        query = f"SELECT id, {ROW_COLUMNS} FROM usage WHERE session IS DISTINCT FROM {{}}"
        buffer = io.BytesIO()
        with self._lock:
            connection = self._usable()
            if connection is None:
                raise self._unreachable("showing this session's rows only")
            try:
                from psycopg import sql

                with connection.cursor() as cursor:
                    copy = sql.SQL(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, NULL '\\N')").format(exclude_session)
                    with cursor.copy(copy) as rows:
                        for chunk in rows:
                            buffer.write(chunk)
            except _errors() as error:
                self._lost(error)
                raise self._unreachable("showing this session's rows only") from None
        return csv_frame(buffer)

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

    def _query(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]] | None:
        """Rows of one query, or None while the server is away."""
        with self._lock:
            connection = self._usable()
            if connection is None:
                return None
            try:
                return connection.execute(sql, parameters).fetchall()  # type: ignore[arg-type]
            except _errors() as error:
                self._lost(error)
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
            connection = self._usable()
            if connection is not None:
                try:
                    taken = self._reserve_on_server(connection, hold, limits, size)
                except _errors() as error:
                    self._lost(error)
                else:
                    if isinstance(taken, Hold):
                        self._taken(taken)
                    return taken
            return self._reserve_here(hold, limits, size)

    def _reserve_on_server(self, connection: psycopg.Connection[Any], hold: Hold, limits: Sequence[Limit], size: Sizer) -> Hold | Refusal:
        now = micros(utc_now())
        with connection.transaction(), connection.cursor() as cursor:
            # A hold lost in a server crash only frees budget early, and its call's row still comes: no fsync wait.
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_SPACE, LOCK_BUDGETS])
            cursor.execute("DELETE FROM holds WHERE expires_us <= %s", [now])
            # Holds of kernels on this machine that have died free their budget at once.
            cursor.execute("SELECT id, pid FROM holds WHERE host = %s", [hold.host])
            dead = [hold_id for hold_id, pid in cursor.fetchall() if pid and not process_alive(int(pid))]
            if dead:
                cursor.execute("DELETE FROM holds WHERE id = ANY(%s)", [dead])
            rooms = []
            for limit in limits:
                room = self._headroom(cursor, limit, limit.user, now)
                self._last_read[_key(limit)] = (room, self._seq)
                rooms.append(room)
            amount = size(rooms)
            if amount is None:
                room = tightest(rooms)
                limit = room.limit
                team = room if limit.user is None else self._headroom(cursor, limit, None, now)
                by_user = room if limit.user is not None else self._headroom(cursor, limit, hold.user, now)
                # Leaving the block commits nothing but the cleanup.
                return replace(room, team=team.spent + team.held, by_user=by_user.spent + by_user.held)
            hold = replace(hold, amount=amount)
            cursor.execute(
                'INSERT INTO holds (id, session, "user", host, pid, amount, created_us, expires_us)'
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [hold.id, hold.session, hold.user, hold.host, hold.pid, hold.amount, micros(hold.created), micros(hold.expires)],
            )
        # What the server counted is known: forget what was counted here before it.
        oldest = min((seq for _, seq in self._last_read.values()), default=self._seq)
        self._since = {k: v for k, v in self._since.items() if v[0] >= oldest}
        return hold

    def _headroom(self, cursor: psycopg.Cursor[Any], limit: Limit, user: str | None, now: int) -> Headroom:
        """What ``limit`` leaves on the server (of ``user``'s rows and holds only, when given).

        A call that ended here counts as spent, at its cost, while its row is still on the way and the server
        still holds its hold.
        """
        settling = dict(self._settling)  # the writer forgets entries as their rows land
        cursor.execute(HEADROOM, {"since": micros(limit.since), "user": user, "now": now, "ids": list(settling)})
        row = cursor.fetchone()
        spent, held, holds, present = row if row else (0.0, 0.0, 0, [])
        ended = [settling[hold_id] for hold_id in present or ()]
        return Headroom(
            limit,
            float(spent) + sum(cost for _, cost, _ in ended),
            max(0.0, float(held) - sum(amount for amount, _, _ in ended)),
            int(holds) - len(ended),
        )

    def _reserve_here(self, hold: Hold, limits: Sequence[Limit], size: Sizer) -> Hold | Refusal:
        if not self._said_offline_budget:
            self._said_offline_budget = True
            notice(f"budgets count the spend last read from {self.name} plus this kernel's calls until it is back")
        rooms = []
        for limit in limits:
            read, seq = self._last_read.get(_key(limit), (Headroom(limit, 0.0), 0))
            since = [(hold_id, amount) for hold_id, (s, amount, user) in self._since.items() if s >= seq and limit.user in (None, user)]
            held = [amount for hold_id, amount in since if hold_id in self._live]
            spent = sum(amount for hold_id, amount in since if hold_id not in self._live)
            rooms.append(Headroom(limit, read.spent + spent, read.held + sum(held), read.holds + len(held)))
        amount = size(rooms)
        if amount is None:
            return tightest(rooms)
        hold = replace(hold, amount=amount)
        self._taken(hold)
        return hold

    def _taken(self, hold: Hold) -> None:
        self._since[hold.id] = (self._seq, hold.amount, hold.user)
        self._live[hold.id] = (hold.amount, hold.user)
        self._seq += 1

    def _count(self, row: UsageRow, release: str | None) -> None:
        """A row replaces its hold in what this kernel counts (caller holds the lock)."""
        cost = 0.0 if row.cost_usd != row.cost_usd else row.cost_usd  # NaN: unpriced, counted as 0
        taken = self._since.get(release) if release else None
        live = self._live.pop(release or "", None)
        if live is not None:
            self._settling[release or ""] = (live[0], cost, live[1])
        if taken is not None:
            self._since[release or ""] = (taken[0], cost, taken[2])
        elif cost:
            self._since[uuid.uuid4().hex] = (self._seq, cost, row.user)
            self._seq += 1

    def release(self, hold_id: str) -> None:
        """Drop a hold whose call left no row to settle it (by the writer, in order with the rows)."""
        with self._lock:
            self._since.pop(hold_id, None)
            self._live.pop(hold_id, None)
        self._keep(uuid.uuid4().hex, hold_id, None)

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


def _key(limit: Limit) -> tuple[str, int, str | None]:
    return (limit.setting, micros(limit.since), limit.user)
