"""What waits for a ledger that cannot be written: a local SQLite file, so a kernel killed meanwhile loses nothing.

The team ledger (``ipyllm._postgres``) keeps every row here until its writer thread has put it on the server;
a ledger file (``ipyllm._sqlite``) keeps rows and cache entries here only while it cannot be written. Each
entry is a usage row (its ledger values and a unique id, so writing it twice is harmless) or a hold to
release, with the hold its row settles. Entries are read back in the order they were put. Cache entries (the
answers a map's resume looks up) wait beside them, the latest per key. Every kernel on the machine that
writes to the same ledger shares the file: whichever reaches the ledger first writes them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ipyllm._locations import Server, SQLiteFile, default_usage_db
from ipyllm._usage import COLUMNS, UsageRow

__all__ = ["Spool", "SpooledEntry", "spool_path", "write_ahead"]

#: A cache entry as the ledger stores it: key, created (microseconds), kind, model, payload (JSON text).
SpooledEntry = tuple[str, int, str, str, str]

_TABLES = (
    "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT UNIQUE, release TEXT, row_values TEXT)",
    "CREATE TABLE IF NOT EXISTS cache (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE,"
    " created_us INTEGER NOT NULL, kind TEXT, model TEXT, payload TEXT NOT NULL)",
)
_PUT = "INSERT OR IGNORE INTO spool (uid, release, row_values) VALUES (?, ?, ?)"
_PUT_CACHE = "INSERT OR REPLACE INTO cache (key, created_us, kind, model, payload) VALUES (?, ?, ?, ?, ?)"

# A row's values are kept by column name, so that a row spooled by an older ipyllm (with other columns) is
# written back by a newer one: a column it lacks takes the row's default. Before issue 19 they were a list (of
# the columns before issue 19 added cache_creation_tokens and tier, and issue 20 images).
_NAMES = list(COLUMNS)
_LISTED = [n for n in _NAMES if n not in ("cache_creation_tokens", "images", "tier")]
_DEFAULTS = {f.name: f.default for f in fields(UsageRow) if f.default is not MISSING}


def _dump(values: list[Any] | None) -> str | None:
    return None if values is None else json.dumps(dict(zip(_NAMES, values, strict=True)))


def _load(text: str | None) -> list[Any] | None:
    if text is None:
        return None
    kept = json.loads(text)
    named = dict(zip(_LISTED, kept, strict=True)) if isinstance(kept, list) else kept
    return [named.get(name, _DEFAULTS.get(name)) for name in _NAMES]


def spool_path(location: SQLiteFile | Server) -> Path:
    """``ipyllm/spool/<digest>.sqlite`` beside the default ledger, one file per ledger (a server named without its
    password: the same server with another password shares its spool)."""
    digest = hashlib.sha256(str(location).encode()).hexdigest()[:16]
    return default_usage_db().path.parent / "spool" / f"{digest}.sqlite"


def write_ahead(connection: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode. SQLite's busy timeout does not cover this switch: two kernels opening a new file at
    the same moment (a ledger, a shared spool) get "database is locked" at once, and one would take the file for
    unusable (a ledger's budgets then counting that kernel's calls only). So it is tried again, for up to
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class Spool:
    """Entries ``(seq, uid, release, values)`` and cache entries in one SQLite file, opened on first use.

    ``values`` is None for an entry that only releases a hold. Raises ``sqlite3.Error`` / ``OSError`` when
    the file cannot be used; the caller keeps the row in memory and says so.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            try:
                write_ahead(connection, 10)
                # Durable when the process is killed (the promise here); no fsync per row, which would cost milliseconds.
                connection.execute("PRAGMA synchronous = NORMAL")
                for table in _TABLES:
                    connection.execute(table)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def open(self) -> None:
        """Open (creating) the file now: raises if it cannot be used, so a caller can say where rows will be."""
        with self._lock:
            self._connect()

    def _unopened(self) -> bool:
        """Nothing to read: never opened here, and no file left by another kernel."""
        return self._connection is None and not self.path.exists()

    def put(self, uid: str, release: str | None, values: list[Any] | None) -> None:
        """Keep one entry, committed before this returns (a kill after it loses nothing)."""
        with self._lock:
            self._connect().execute(_PUT, [uid, release, _dump(values)])

    def put_many(self, entries: Sequence[tuple[str, str | None, list[Any] | None]], cache: Sequence[SpooledEntry] = ()) -> None:
        """Keep entries and cache entries, committed together before this returns."""
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(_PUT, [(uid, release, _dump(v)) for uid, release, v in entries])
                connection.executemany(_PUT_CACHE, cache)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def peek(self, limit: int = 500) -> list[tuple[int, str, str | None, list[Any] | None]]:
        """The oldest ``limit`` entries, in the order they were put."""
        if self._unopened():
            return []
        with self._lock:
            rows = self._connect().execute("SELECT seq, uid, release, row_values FROM spool ORDER BY seq LIMIT ?", [limit]).fetchall()
        return [(seq, uid, release, _load(values)) for seq, uid, release, values in rows]

    def drop(self, last_seq: int) -> None:
        """Forget the entries up to ``last_seq`` (they are in the ledger now)."""
        with self._lock:
            self._connect().execute("DELETE FROM spool WHERE seq <= ?", [last_seq])

    def peek_cache(self, limit: int = 500) -> list[tuple[int, SpooledEntry]]:
        """The oldest ``limit`` cache entries, each with its sequence number."""
        if self._unopened():
            return []
        with self._lock:
            rows = (
                self._connect()
                .execute("SELECT seq, key, created_us, kind, model, payload FROM cache ORDER BY seq LIMIT ?", [limit])
                .fetchall()
            )
        return [(seq, (key, created, kind, model, payload)) for seq, key, created, kind, model, payload in rows]

    def drop_cache(self, last_seq: int) -> None:
        """Forget the cache entries up to ``last_seq`` (they are in the ledger now)."""
        with self._lock:
            self._connect().execute("DELETE FROM cache WHERE seq <= ?", [last_seq])

    def cached(self, keys: Sequence[str]) -> dict[str, str]:
        """The payloads of those of ``keys`` that wait here."""
        if self._unopened() or not keys:
            return {}
        found: dict[str, str] = {}
        with self._lock:
            connection = self._connect()
            for start in range(0, len(keys), 500):  # well under SQLite's limit on parameters
                chunk = keys[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                found.update(connection.execute(f"SELECT key, payload FROM cache WHERE key IN ({marks})", chunk).fetchall())
        return found

    def __len__(self) -> int:
        """Entries (rows and releases) waiting; cache entries are not counted (``waiting()`` counts both)."""
        if self._unopened():
            return 0
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def waiting(self) -> tuple[int, int]:
        """Entries and cache entries waiting."""
        if self._unopened():
            return 0, 0
        with self._lock:
            connection = self._connect()
            entries = connection.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            cached = connection.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
        return int(entries), int(cached)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
