"""The SQLite ledger's schema and SQL: its versioned migrations and the statements that write rows, holds and
cache entries, shared by the store (``ipyllm._sqlite``) and its watched file (``ipyllm._sqlfile``)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ipyllm._batchclaim import SQLITE_CLAIMS
from ipyllm._batchledger import SQLITE_TABLE
from ipyllm._spool import SpooledEntry
from ipyllm._totals import BACKFILL, TABLES, sqlite_trigger
from ipyllm._usage import COLUMNS

__all__ = [
    "COPIES",
    "INSERT_ROW",
    "MIGRATIONS",
    "PUT_CACHE",
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "Entry",
    "apply",
    "cached",
    "committed",
    "migrate",
    "new_uid",
]

ROW_COLUMNS = ", ".join(["timestamp_us", *list(COLUMNS)[1:]])
# OR IGNORE: a row already in the ledger (the same uid: from the spool, or from a file that vanished) is skipped.
INSERT_ROW = f"INSERT OR IGNORE INTO usage (uid, {ROW_COLUMNS}) VALUES (?, {', '.join('?' * len(COLUMNS))})"
PUT_CACHE = "INSERT OR REPLACE INTO cache (key, created_us, kind, model, payload) VALUES (?, ?, ?, ?, ?)"
_HOLD_COLUMNS = "id, session, user, host, pid, amount, created_us, expires_us"
#: What a file that vanished holds (read from it while it is still open), and how it is copied into the ledger.
COPIES = (
    (f"SELECT uid, {ROW_COLUMNS} FROM usage ORDER BY id", INSERT_ROW),
    ("SELECT key, created_us, kind, model, payload FROM cache", PUT_CACHE.replace("OR REPLACE", "OR IGNORE")),
    (
        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE expires_us > ?",
        f"INSERT OR IGNORE INTO holds ({_HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    ),
)
#: A row to write: its uid, the hold it settles, its ledger values (None: only a hold to release).
Entry = tuple[str, str | None, list[Any] | None]


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
    (
        # A unique id per row (as the team ledger has), so that a row written twice is stored once.
        "ALTER TABLE usage ADD COLUMN uid TEXT",
        "UPDATE usage SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS usage_uid ON usage (uid)",
    ),
    (
        # Issue 19: prompt-cache writes, and how a call was bought (every earlier call was live).
        "ALTER TABLE usage ADD COLUMN cache_creation_tokens INTEGER",
        "ALTER TABLE usage ADD COLUMN tier TEXT DEFAULT 'live'",
    ),
    (
        # Issue 19: provider batches, so that a batch outlives the kernel that sent it (``_batchledger``).
        SQLITE_TABLE,
        "CREATE INDEX IF NOT EXISTS batches_map ON batches (map_key)",
    ),
    (
        # Issue 19: who is sending a map's batches right now, so that two kernels sending it at once send it once
        # (``_batchclaim``).
        SQLITE_CLAIMS,
    ),
    (
        # Issue 20: images sent with a call (an earlier row's is unknown: NULL).
        "ALTER TABLE usage ADD COLUMN images INTEGER",
    ),
    (
        # Issue 21: the notebook a row came from (an earlier row's is unknown: NULL); a session's own rows and a
        # notebook's, read by time without scanning the ledger.
        "ALTER TABLE usage ADD COLUMN notebook TEXT",
        "CREATE INDEX IF NOT EXISTS usage_session_time ON usage (session, timestamp_us)",
        # Issue 21: the running totals the views read instead of a million rows (``_totals``).
        *TABLES("INTEGER", "REAL"),
        sqlite_trigger(),
        *BACKFILL,
    ),
    (
        # Issue 21: the rows packed in column chunks, so that a fresh kernel reads a whole ledger's frame fast
        # (``_framechunks``).
        """CREATE TABLE IF NOT EXISTS frame_chunks (
            after_id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL, row_count INTEGER NOT NULL, last_uid TEXT NOT NULL,
            format TEXT NOT NULL, data BLOB NOT NULL)""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def committed(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, unless it rolled back itself; rolled
    back on any error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        if connection.in_transaction:
            connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def new_uid() -> str:
    """A row's unique id (a row written twice is stored once)."""
    return os.urandom(16).hex()


def apply(connection: sqlite3.Connection, entries: Sequence[Entry], cache: Sequence[SpooledEntry]) -> int:
    """Rows, the holds they settle and cache entries, in order, in the caller's transaction; the rows inserted."""
    if any(release is not None for _, release, _ in entries):
        inserted = 0
        for uid, release, values in entries:
            if values is not None:
                inserted += connection.execute(INSERT_ROW, [uid, *values]).rowcount
            if release is not None:
                connection.execute("DELETE FROM holds WHERE id = ?", [release])
    else:
        inserted = connection.executemany(INSERT_ROW, [[uid, *values] for uid, _, values in entries if values is not None]).rowcount
    connection.executemany(PUT_CACHE, cache)
    return inserted


def cached(connection: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
    """The payloads of those of ``keys`` that are in the cache."""
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):  # well under SQLite's limit on parameters
        chunk = keys[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(connection.execute(f"SELECT key, payload FROM cache WHERE key IN ({marks})", chunk).fetchall())
    return found


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the file's schema to ``SCHEMA_VERSION`` (``PRAGMA user_version``); raises for a file from a newer ipyllm."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this ipyllm's {SCHEMA_VERSION}: upgrade ipyllm")
    if version == SCHEMA_VERSION:
        return
    # BEGIN IMMEDIATE: two kernels opening a new ledger at once migrate it once.
    with committed(connection):
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
