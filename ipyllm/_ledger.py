"""Which ledger a location names: the SQLite file (``_sqlite``), a team's PostgreSQL server (``_postgres``), or
none (``Memory``: this session's rows stay in memory only).

Nothing is connected or opened by choosing: that happens on first use; psycopg is imported only by a
PostgreSQL store that connects.
"""

from __future__ import annotations

import hashlib

from ipyllm._locations import Location, Memory, Server, SQLiteFile
from ipyllm._postgres import PostgresStore
from ipyllm._sqlite import SQLiteStore
from ipyllm._store import Store

__all__ = ["open_store", "store_key"]


def store_key(location: SQLiteFile | Server) -> str:
    """The ledger's key in the session: a file's path; a server without its password, and a digest of it."""
    if isinstance(location, Server):
        # Another password is another store (the old one may have been refused); the digest never shows.
        return f"{location}#{hashlib.sha256(location.url().encode()).hexdigest()[:12]}"
    return str(location.path)


def open_store(location: Location) -> Store | None:
    """The store at ``location``: None for ``Memory``, the PostgreSQL server, or the SQLite file."""
    if isinstance(location, Memory):
        return None
    if isinstance(location, Server):
        return PostgresStore(location)
    return SQLiteStore(location)
