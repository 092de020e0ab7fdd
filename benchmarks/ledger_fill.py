"""A ledger of many rows, written fast: the rows a team's ledger gathers over a year, for the ledger benchmarks and
tests (``ledger_bench.py``).

Rows are bulk-inserted (SQLite: one transaction of ``executemany``; PostgreSQL: ``COPY``) with the running totals'
trigger off, then the totals are made from the rows at once (``_totals.BACKFILL``) and the trigger put back, and the
rows are packed in chunks (``_framechunks.pack``), as the kernels that write them pack them: the ledger ends as it
would after as many calls, minutes sooner.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipyllm._framechunks import pack
from ipyllm._locations import SQLiteFile, parse_location
from ipyllm._sqlite import SQLiteStore
from ipyllm._sqlschema import ROW_COLUMNS
from ipyllm._totals import BACKFILL, LEVELS, sqlite_trigger

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20240620", "o1", "text-embedding-3-small")
STATUSES = ("ok",) * 17 + ("error", "cached", "over_budget")
#: Calls per session: a session's calls follow each other, by one user, in one notebook.
PER_SESSION = 200
YEAR_US = 365 * 86400 * 1_000_000


def rows(count: int, seed: int = 1, end_us: int | None = None) -> Iterator[tuple[Any, ...]]:
    """``count`` rows over the year before ``end_us`` (now), oldest first: uid, then ``ROW_COLUMNS``."""
    pick = random.Random(seed)
    end_us = end_us or int(time.time() * 1_000_000)
    step = YEAR_US // max(count, 1)
    for n in range(count):
        session = n // PER_SESSION
        status = pick.choice(STATUSES)
        prompt = pick.randrange(5, 4000)
        completion = None if status in ("error", "over_budget") else pick.randrange(1, 800)
        cost = None if status == "error" or n % 97 == 0 else 0.0 if status == "cached" else round(prompt * 2.5e-6, 8)
        yield (
            f"bench-{seed}-{n:09d}",
            end_us - YEAR_US + n * step,
            f"session-{session}",
            pick.randrange(1, 60),
            "api",
            "chat",
            pick.choice(MODELS),
            "openai",
            prompt,
            completion,
            prompt + (completion or 0),
            None,
            0,
            cost,
            pick.random() * 3,
            1 + (n % 11 == 0),
            status,
            "RateLimitError: slow down" if status == "error" else None,
            None,
            None,
            None,
            "live",
            None if session % 9 == 0 else f"work/analysis-{session % 23}.ipynb",
            f"user-{session % 7}",
            f"host-{session % 3}",
        )


def fill_sqlite(path: Path, count: int, seed: int = 1, end_us: int | None = None) -> float:
    """A SQLite ledger at ``path`` with ``count`` more rows (over the year before ``end_us``); the seconds it took."""
    started = time.perf_counter()
    store = SQLiteStore(SQLiteFile(path))
    store.count()  # made and migrated
    store.close()
    connection = sqlite3.connect(path, isolation_level=None)
    marks = ", ".join("?" * (ROW_COLUMNS.count(",") + 2))
    connection.execute("PRAGMA synchronous = OFF")
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("DROP TRIGGER usage_totals_add")
    connection.executemany(f"INSERT INTO usage (uid, {ROW_COLUMNS}) VALUES ({marks})", rows(count, seed, end_us))
    for (table, _), backfill in zip(LEVELS, BACKFILL, strict=True):
        connection.execute(f"DELETE FROM {table}")
        connection.execute(backfill)
    connection.execute(sqlite_trigger())
    connection.execute("COMMIT")
    connection.execute("ANALYZE")
    connection.close()
    store = SQLiteStore(SQLiteFile(path))
    pack(store)
    store.close()
    return time.perf_counter() - started


def fill_postgres(url: str, count: int, seed: int = 1, end_us: int | None = None) -> float:
    """The PostgreSQL ledger at ``url`` with ``count`` more rows (``COPY``; over the year before ``end_us``); the seconds it took."""
    import psycopg

    from ipyllm._pgschema import ROW_COLUMNS as PG_COLUMNS
    from ipyllm._postgres import PostgresStore

    started = time.perf_counter()
    location = parse_location(url)
    store = PostgresStore(location)  # type: ignore[arg-type]
    store.count()  # made and migrated
    store.close()
    with psycopg.connect(url, autocommit=True) as connection:
        with connection.transaction():
            connection.execute("ALTER TABLE usage DISABLE TRIGGER usage_totals_add")
            with connection.cursor() as cursor, cursor.copy(f"COPY usage (uid, {PG_COLUMNS}) FROM STDIN") as copy:
                for row in rows(count, seed, end_us):
                    copy.write_row(row)
            for (table, _), backfill in zip(LEVELS, BACKFILL, strict=True):
                connection.execute(f"DELETE FROM {table}")
                connection.execute(backfill)
            connection.execute("ALTER TABLE usage ENABLE TRIGGER usage_totals_add")
        connection.execute("ANALYZE usage")
        for table, _ in LEVELS:
            connection.execute(f"ANALYZE {table}")
    store = PostgresStore(location)  # type: ignore[arg-type]
    pack(store)
    store.close()
    return time.perf_counter() - started
