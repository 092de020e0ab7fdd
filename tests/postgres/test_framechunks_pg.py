"""The ledger's rows packed in chunks on a real PostgreSQL server: a fresh store reads the whole ledger's frame from
them and from the rows above them only, equal to an uncached read; a row committed into a packed range after it was
packed (an id handed out before the chunk was made) is read; a store packs as it writes; no password in a chunk."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pandas.testing import assert_frame_equal

from ipyllm import _framechunks
from ipyllm._locations import parse_location
from ipyllm._postgres import PostgresStore
from ipyllm._usage import UsageRow

from ..ledgerviews import random_rows
from ..unit.test_framecache import Spy
from .pg import PostgresServer
from .test_framecache_pg import appended, insert, uncached

CHUNK = 20


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_framechunks, "CHUNK_ROWS", CHUNK)
    monkeypatch.setenv("IPYLLM_CACHE_DIR", "")  # no frame file: every new store reads the ledger


@pytest.fixture
def url(pg: PostgresServer) -> str:
    url = pg.url(pg.new_database())
    appended(url, random_rows(95, seed=1))
    return url


def opened(url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(parse_location(url))  # type: ignore[arg-type]
    try:
        yield store
    finally:
        store.close()


def packed(url: str) -> int:
    for store in opened(url):
        return _framechunks.pack(store)
    raise AssertionError


def fresh_read(url: str) -> tuple[object, list[int]]:
    for store in opened(url):
        spy = Spy(store)
        return store.frame(), spy.after
    raise AssertionError


def chunks(url: str) -> list[tuple[int, int, int]]:
    import psycopg

    with psycopg.connect(url) as connection:
        return connection.execute("SELECT after_id, last_id, row_count FROM frame_chunks ORDER BY after_id").fetchall()


def test_a_fresh_store_reads_the_chunks_and_only_the_rows_above_them(url: str, pg: PostgresServer) -> None:
    assert packed(url) == 4
    assert [(after, last) for after, last, _ in chunks(url)] == [(0, 20), (20, 40), (40, 60), (60, 80)]
    frame, after = fresh_read(url)
    assert after == [80]
    assert_frame_equal(frame, uncached(url))  # type: ignore[arg-type]
    import psycopg

    with psycopg.connect(url) as connection:
        data = b"".join(bytes(row[0]) for row in connection.execute("SELECT data FROM frame_chunks").fetchall())
    assert pg.password.encode() not in data


def test_a_row_committed_into_a_packed_range_after_packing_is_read(url: str) -> None:
    import psycopg

    packed(url)
    with psycopg.connect(url, autocommit=True) as slow, psycopg.connect(url, autocommit=True) as fast:
        with slow.transaction():
            insert(slow, UsageRow(session="slow", model="first-id"))  # takes id 96, committed last
            for number in range(CHUNK):
                insert(fast, UsageRow(session="fast", model=f"later-{number}"))
            assert packed(url) == 1
            assert chunks(url)[-1][:2] == (80, 101), "packed over id 96, not yet committed (81-95, then 97-101)"
        frame, after = fresh_read(url)
    assert "first-id" in set(frame["model"])  # type: ignore[index]
    assert 80 in after, "the stale chunk's rows are read"
    assert_frame_equal(frame, uncached(url))  # type: ignore[arg-type]


def test_a_store_packs_as_it_writes(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ipyllm._framecache.CHECK_EVERY", 10)
    for store in opened(url):
        for row in random_rows(9, seed=3):
            store.append(row)
        assert store.frames._packer is None
        store.append(random_rows(1, seed=4)[0])
        assert store.frames._packer is not None
        store.frames._packer.join(30)
        assert store.flush()
    assert len(chunks(url)) >= 4, "the rows there when it looked"
    frame, _ = fresh_read(url)
    assert_frame_equal(frame, uncached(url))  # type: ignore[arg-type]
