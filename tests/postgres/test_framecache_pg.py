"""The frames a PostgreSQL store keeps and extends, on a real server: every read equals an uncached read (after rows
from another connection, with any window and columns, after a row committed after rows with higher ids); the whole
ledger's frame is kept on disk for a fresh store, with no password in its name or content."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from ipyllm._framefile import frame_file, identity_of, load
from ipyllm._locations import parse_location
from ipyllm._pgschema import INSERT_ROW
from ipyllm._postgres import PostgresStore
from ipyllm._usage import UsageRow, row_values
from ipyllm._views import Window

from ..ledgerviews import random_rows
from ..unit.test_framecache import READS, Spy, direct, later
from .pg import PostgresServer


@pytest.fixture
def url(pg: PostgresServer) -> str:
    url = pg.url(pg.new_database())
    appended(url, random_rows(80, seed=1))
    return url


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(parse_location(url))  # type: ignore[arg-type]
    yield opened
    opened.close()


def appended(url: str, rows: list[UsageRow]) -> None:
    """Rows written by another kernel (its own store and connection)."""
    other = PostgresStore(parse_location(url))  # type: ignore[arg-type]
    other.append_many(rows)
    assert other.flush()
    other.close()


def uncached(url: str, exclude: str | None = None, window: Window | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """The frame as read without the cache: the window's rows (the session left out in SQL), by a new store."""
    store = PostgresStore(parse_location(url))  # type: ignore[arg-type]
    try:
        return direct(store, exclude, window, columns)
    finally:
        store.close()


@pytest.mark.parametrize(("exclude", "window", "columns"), READS)
def test_a_read_after_appends_equals_an_uncached_read_and_reads_only_the_new_rows(
    url: str, store: PostgresStore, exclude: str | None, window: Window | None, columns: list[str] | None
) -> None:
    spy = Spy(store)
    assert_frame_equal(store.frame(exclude, window, columns), uncached(url, exclude, window, columns))
    appended(url, random_rows(30, seed=2))
    assert_frame_equal(store.frame(exclude, window, columns), uncached(url, exclude, window, columns))
    appended(url, later(random_rows(20, seed=3), timedelta(days=5)))
    assert_frame_equal(store.frame(exclude, window, columns), uncached(url, exclude, window, columns))
    assert spy.after[0] == 0 and all(after > 0 for after in spy.after[1:]) and len(spy.after) == 3


def insert(connection: Any, row: UsageRow) -> None:
    connection.execute(INSERT_ROW, [uuid.uuid4().hex, *row_values(row)])


def test_a_row_committed_after_rows_with_higher_ids_is_read(url: str, store: PostgresStore) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as slow, psycopg.connect(url, autocommit=True) as fast:
        with slow.transaction():
            insert(slow, UsageRow(session="slow", model="first-id"))  # takes the lower id, committed last
            insert(fast, UsageRow(session="fast", model="second-id"))
            seen = store.frame()
            assert "second-id" in set(seen["model"]) and "first-id" not in set(seen["model"])
        again = store.frame()
    assert "first-id" in set(again["model"])
    assert_frame_equal(again, uncached(url))


def test_a_fresh_store_extends_the_kept_frame_and_no_password_is_kept(url: str, pg: PostgresServer, tmp_path: Path) -> None:
    store = PostgresStore(parse_location(url))  # type: ignore[arg-type]
    store.frame()
    store.close()
    identity = identity_of(parse_location(url))  # type: ignore[arg-type]
    snapshot = load(identity)
    assert snapshot is not None and snapshot.mark.count == 80
    appended(url, random_rows(2, seed=4))
    fresh = PostgresStore(parse_location(url))  # type: ignore[arg-type]
    spy = Spy(fresh)
    try:
        assert_frame_equal(fresh.frame("s1"), uncached(url, "s1"))
    finally:
        fresh.close()
    assert spy.after == [snapshot.mark.top]
    files = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert files == [frame_file(identity)]
    for path in files:
        assert pg.password not in str(path)
        assert pg.password.encode() not in path.read_bytes()
