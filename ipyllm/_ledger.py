"""Which ledger ``usage_db`` names: the SQLite file (``_sqlite``), a team's PostgreSQL server (``_postgres``), or
none (``:memory:``: this session's rows stay in memory only).

Nothing is connected or opened by choosing: that happens on first use; psycopg is imported only by a
PostgreSQL store that connects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ipyllm._config import LedgerURL, plain_text
from ipyllm._postgres import PostgresStore
from ipyllm._sqlite import SQLiteStore
from ipyllm._store import Store, default_usage_db

__all__ = ["is_server_url", "open_store", "store_key"]

_SERVER_SCHEMES = ("postgresql://", "postgres://")


def is_server_url(name: str | None) -> bool:
    """True for a PostgreSQL URL (``postgresql://user@host:5432/dbname``)."""
    return name is not None and name.strip().lower().startswith(_SERVER_SCHEMES)


def store_key(usage_db: str | None) -> str:
    """The ledger's key in the session: a file's full path; a URL without its password, and a digest of it."""
    if is_server_url(usage_db):
        url = LedgerURL(plain_text(usage_db) if isinstance(usage_db, str) else "")
        # Another password is another store (the old one may have been refused); the digest never shows.
        return f"{url.masked()}#{hashlib.sha256(url.reveal().encode()).hexdigest()[:12]}"
    return str(Path(usage_db).expanduser()) if usage_db else str(default_usage_db())


def open_store(usage_db: str | None) -> Store | None:
    """The store ``usage_db`` names: None for ``:memory:``, the PostgreSQL server for a URL, else a SQLite file."""
    if usage_db == ":memory:":
        return None
    if is_server_url(usage_db):
        return PostgresStore(usage_db if isinstance(usage_db, LedgerURL) else LedgerURL(plain_text(usage_db or "")))
    return SQLiteStore(store_key(usage_db))
