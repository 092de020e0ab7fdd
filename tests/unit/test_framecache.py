"""The frames a SQLite store keeps and extends: every read equals the frame an uncached read gives (after appends from
another connection or process, rows with earlier times, a ledger file made again, any window and columns), reads
only the rows added since, and hands out a frame the caller may change."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from ipyllm import _framecache
from ipyllm._locations import SQLiteFile
from ipyllm._sqlite import SQLiteStore
from ipyllm._usage import UsageRow
from ipyllm._views import Window, selected_columns

from ..helpers import ROOT
from ..ledgerviews import NOW, SINCE, UNTIL, random_rows

#: What a frame is read with: the session left out, the window, the columns.
READS: list[tuple[str | None, Window | None, list[str] | None]] = [
    (None, None, None),
    ("s2", None, None),
    (None, Window(since=SINCE, until=UNTIL), None),
    ("s1", Window(user="ada"), ["model", "cost_usd"]),
    (None, None, ["session", "status", "tokens_estimated"]),
    (None, Window(where={"model": ["gpt-4o", None], "status": "ok"}), None),
]


class Spy:
    """Records which rows each read of a store (in this thread: not the packing of chunks) asks the ledger for: the id
    it reads above (0: every row)."""

    def __init__(self, store: Any) -> None:
        self.after: list[int] = []
        read = store.frame_rows
        reader = threading.current_thread()

        def frame_rows(where: str, parameters: Sequence[Any], names: list[str]) -> Any:
            if threading.current_thread() is reader:
                self.after.append(int(parameters[-2]))
            return read(where, parameters, names)

        store.frame_rows = frame_rows


def uncached(path: Path, exclude: str | None = None, window: Window | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """The frame as read without the cache: the window's rows (the session left out in SQL), by a new store."""
    store = SQLiteStore(SQLiteFile(path))
    try:
        return direct(store, exclude, window, columns)
    finally:
        store.close()


def direct(store: Any, exclude: str | None, window: Window | None, columns: list[str] | None) -> pd.DataFrame:
    """The rows ``store.frame`` returns, read straight from the ledger with the window's SQL."""
    where, parameters = replace(window or Window(), exclude_session=exclude).sql()
    return store.frame_rows(where, parameters, selected_columns(columns))[1]


def appended(path: Path, rows: list[UsageRow]) -> None:
    """Rows appended by another connection (another kernel)."""
    other = SQLiteStore(SQLiteFile(path))
    other.append_many(rows)
    other.close()


def later(rows: list[UsageRow], by: timedelta) -> list[UsageRow]:
    for row in rows:
        row.timestamp += by
    return rows


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    appended(path, random_rows(80, seed=1))
    return path


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(SQLiteFile(path))
    yield opened
    opened.close()


@pytest.mark.parametrize(("exclude", "window", "columns"), READS)
def test_a_read_after_appends_equals_an_uncached_read_and_reads_only_the_new_rows(
    path: Path, store: SQLiteStore, exclude: str | None, window: Window | None, columns: list[str] | None
) -> None:
    spy = Spy(store)
    assert_frame_equal(store.frame(exclude, window, columns), uncached(path, exclude, window, columns))
    top = store.frames._frames[next(reversed(store.frames._frames))].mark.top
    appended(path, random_rows(30, seed=2))  # times among the rows already read: re-sorted
    assert_frame_equal(store.frame(exclude, window, columns), uncached(path, exclude, window, columns))
    appended(path, later(random_rows(20, seed=3), timedelta(days=5)))  # all after them: added at the end
    assert_frame_equal(store.frame(exclude, window, columns), uncached(path, exclude, window, columns))
    assert_frame_equal(store.frame(exclude, window, columns), uncached(path, exclude, window, columns))  # nothing new
    assert spy.after == [0, top, top + 30], "the first read reads every row, then only the rows added since"


def test_rows_appended_by_another_process_are_read(path: Path, store: SQLiteStore) -> None:
    before = store.frame()
    script = (
        "import sys; from ipyllm._locations import SQLiteFile; from ipyllm._sqlite import SQLiteStore; from ipyllm._usage import UsageRow\n"
        "store = SQLiteStore(SQLiteFile(sys.argv[1]))\n"
        "store.append_many([UsageRow(session='elsewhere', model=f'm{n}', cost_usd=n / 100) for n in range(7)])\n"
        "store.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    after = store.frame()
    assert len(after) == len(before) + 7 and list(after["model"].iloc[-7:]) == [f"m{n}" for n in range(7)]
    assert_frame_equal(after, uncached(path))


def test_a_ledger_file_made_again_with_as_many_rows_is_read_again(path: Path, store: SQLiteStore) -> None:
    spy = Spy(store)
    first = store.frame()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    appended(path, random_rows(80, seed=9))  # as many rows, and the same ids: other uids
    again = store.frame()
    assert_frame_equal(again, uncached(path))
    assert not again.equals(first)
    assert spy.after == [0, 0], "the rows held no longer check out: the ledger is read whole"


def test_the_caller_may_change_the_frame_it_gets(path: Path, store: SQLiteStore) -> None:
    for exclude, window, columns in READS[:3]:
        frame = store.frame(exclude, window, columns)
        frame.loc[0, "session"] = "changed"
        frame.loc[1, "timestamp"] = frame.loc[1, "timestamp"] + timedelta(days=1)
        frame["cost_usd"] = 0.0
        frame.loc[2] = frame.loc[3]
        del frame["timestamp"]
        assert_frame_equal(store.frame(exclude, window, columns), uncached(path, exclude, window, columns))


def test_frames_over_the_limit_are_not_kept(path: Path, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_framecache, "MAX_ROWS", 50)
    spy = Spy(store)
    store.frame()
    store.frame()
    store.frame("s9", columns=["model"])
    store.frame("s9", columns=["model"])
    assert spy.after == [0, 0, 0, 0]
    assert not store.frames._frames


def test_only_the_last_windows_read_are_kept(store: SQLiteStore) -> None:
    for hours in range(1, 7):
        store.frame(window=Window(since=NOW - timedelta(hours=hours)))
    assert len(store.frames._frames) == _framecache.MAX_FRAMES


def test_threads_reading_while_rows_are_appended_each_get_a_whole_frame(path: Path, store: SQLiteStore) -> None:
    failures: list[BaseException] = []
    counts: list[list[int]] = [[] for _ in range(3)]

    def read(mine: list[int]) -> None:
        try:
            for _ in range(15):
                frame = store.frame("s3")
                assert frame["timestamp"].is_monotonic_increasing
                mine.append(len(frame))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=read, args=(mine,)) for mine in counts]
    for thread in threads:
        thread.start()
    for seed in range(10, 16):
        appended(path, random_rows(5, seed=seed))
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert all(mine == sorted(mine) for mine in counts), "a later read never holds fewer rows"
    assert_frame_equal(store.frame("s3"), uncached(path, "s3"))
