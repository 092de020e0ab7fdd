"""Claims on a map's submission: who is sending a map's batches right now, so that two kernels (or two sessions,
or two threads) running the same map at the same instant send it once.

Before it uploads anything, a session claims the map in the ledger (a row of the ``batch_claims`` table, keyed by
the map's key: a second claim on the same key fails, in SQLite as in PostgreSQL, and in memory under a lock). It
keeps the claim until its batches are recorded (or its submission failed: a budget refusal, an upload error), then
releases it. Whoever finds the map claimed waits for the claimer's batches and attaches to them.

A claim that outlives its claimer is stale and may be taken over: one older than ``STALE_SECONDS``, or one whose
process is gone (on the same host: a process elsewhere cannot be asked).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "CLAIM_COLUMNS",
    "DELETE_CLAIM",
    "INSERT_CLAIM",
    "PG_CLAIMS",
    "SELECT_CLAIM",
    "SQLITE_CLAIMS",
    "STALE_SECONDS",
    "Claim",
    "claim_of",
    "claim_values",
    "is_stale",
]

#: A claim this old (seconds) is taken to be left by a claimer that died or hung: building and uploading a batch's
#: files takes seconds, or a minute or two for the largest.
STALE_SECONDS = 600.0


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Claim:
    """One session's claim on sending one map's batches."""

    map_key: str
    session: str
    user: str | None = None
    host: str | None = None
    pid: int = field(default_factory=os.getpid)
    #: How many rows (distinct requests) the claimer is sending.
    rows: int = 0
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    id: str = field(default_factory=_new_id)


CLAIM_COLUMNS = ("map_key", "id", "session", "user", "host", "pid", "rows", "created_us")
_NAMES = ", ".join('"user"' if c == "user" else c for c in CLAIM_COLUMNS)


def _table(quote: str, integer: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS batch_claims (map_key TEXT PRIMARY KEY, id TEXT NOT NULL, session TEXT,"
        f" {quote}user{quote} TEXT, host TEXT, pid INTEGER, rows INTEGER, created_us {integer} NOT NULL)"
    )


SQLITE_CLAIMS = _table("", "INTEGER")
PG_CLAIMS = _table('"', "BIGINT")
#: The statements both stores run (``?`` placeholders; ``_batchledger.postgres()`` gives PostgreSQL's). The insert
#: fails (SQLite) or does nothing (PostgreSQL) when the map is claimed: its key is the table's primary key.
INSERT_CLAIM = f"INSERT INTO batch_claims ({_NAMES}) VALUES ({', '.join('?' * len(CLAIM_COLUMNS))})"
SELECT_CLAIM = f"SELECT {_NAMES} FROM batch_claims WHERE map_key = ?"
#: A claim ends by its own id: a waiter that found a claim stale never deletes the one another waiter took since.
DELETE_CLAIM = "DELETE FROM batch_claims WHERE id = ?"


def claim_values(claim: Claim) -> list[Any]:
    return [claim.map_key, claim.id, claim.session, claim.user, claim.host, claim.pid, claim.rows, int(claim.created.timestamp() * 1e6)]


def claim_of(row: tuple[Any, ...] | list[Any]) -> Claim:
    map_key, claim_id, session, user, host, pid, rows, created_us = row
    created = datetime.fromtimestamp(created_us / 1e6, timezone.utc)
    return Claim(map_key, session, user, host, int(pid or 0), int(rows or 0), created, claim_id)


def is_stale(claim: Claim, host: str | None, alive: Callable[[int], bool], now: datetime | None = None) -> bool:
    """Whether ``claim`` was left by a claimer that is gone: older than ``STALE_SECONDS``, or made on ``host`` (the
    asker's) by a process ``alive(pid)`` says is dead."""
    now = now or datetime.now(timezone.utc)
    if now - claim.created > timedelta(seconds=STALE_SECONDS):
        return True
    return claim.host == host and bool(claim.pid) and not alive(claim.pid)
