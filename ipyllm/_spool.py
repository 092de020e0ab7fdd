"""Rows waiting for a ledger server: a local SQLite file, so a kernel killed while the server is away loses nothing.

Each entry is a usage row (its ledger values and a unique id, so writing it twice is harmless) or a hold to
release, with the hold its row settles. Entries are read back in the order they were put. Every kernel on the
machine that writes to the same server shares the file: whichever reaches the server first writes them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

__all__ = ["Spool", "spool_path"]


def spool_path(name: str) -> Path:
    """``ipyllm/spool/<digest>.sqlite`` beside the default ledger, one file per server (named without its password)."""
    from ipyllm._ledger import default_usage_db

    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return default_usage_db().parent / "spool" / f"{digest}.sqlite"


class Spool:
    """Entries ``(seq, uid, release, values)`` in one SQLite file, opened on first use.

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
            connection.execute("PRAGMA journal_mode = WAL")
            # Durable when the process is killed (the promise here); no fsync per row, which would cost milliseconds.
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT UNIQUE, release TEXT, row_values TEXT)"
            )
            self._connection = connection
        return self._connection

    def put(self, uid: str, release: str | None, values: list[Any] | None) -> None:
        """Keep one entry, committed before this returns (a kill after it loses nothing)."""
        with self._lock:
            self._connect().execute(
                "INSERT OR IGNORE INTO spool (uid, release, row_values) VALUES (?, ?, ?)",
                [uid, release, None if values is None else json.dumps(values)],
            )

    def peek(self, limit: int = 500) -> list[tuple[int, str, str | None, list[Any] | None]]:
        """The oldest ``limit`` entries, in the order they were put."""
        if self._connection is None and not self.path.exists():
            return []
        with self._lock:
            rows = self._connect().execute("SELECT seq, uid, release, row_values FROM spool ORDER BY seq LIMIT ?", [limit]).fetchall()
        return [(seq, uid, release, None if values is None else json.loads(values)) for seq, uid, release, values in rows]

    def drop(self, last_seq: int) -> None:
        """Forget the entries up to ``last_seq`` (they are on the server now)."""
        with self._lock:
            self._connect().execute("DELETE FROM spool WHERE seq <= ?", [last_seq])

    def __len__(self) -> int:
        if self._connection is None and not self.path.exists():
            return 0
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
