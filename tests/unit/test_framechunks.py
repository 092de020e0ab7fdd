"""The ledger's rows packed in chunks (SQLite): a fresh store reads the whole ledger's frame from them and from the rows
above them only, and the frame equals an uncached read; a chunk made stale (a row deleted, or committed into its range
later), damaged, of another format or naming a dtype that is no data is passed over and its rows read; kernels pack
as they write and after reading many unpacked rows, two of them at once without harm."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal

from ipyllm import _framechunks
from ipyllm._framecodec import FORMAT
from ipyllm._locations import SQLiteFile
from ipyllm._sqlite import SQLiteStore
from ipyllm._usage import COLUMNS, UsageRow

from ..helpers import ROOT
from ..ledgerviews import random_rows
from .test_framecache import Spy, appended, uncached

#: Small chunks, so that a ledger of a hundred rows has several.
CHUNK = 20


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_framechunks, "CHUNK_ROWS", CHUNK)
    monkeypatch.setenv("IPYLLM_CACHE_DIR", "")  # no frame file: every new store reads the ledger


def hostile(count: int) -> list[UsageRow]:
    """Rows whose texts hold what a separator-based encoding would trip over."""
    rows = random_rows(count, seed=5)
    for number, row in enumerate(rows):
        row.model = ["gpt-4o\n\x1f", "ünïcödé 模型", "", "a,b;'\"c\\N", "\x00nul"][number % 5]
        row.error = None if number % 3 else "line one\r\nline two\x1e"
    return rows


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    appended(path, random_rows(80, seed=1) + hostile(15))  # 95 rows: 4 chunks and 15 above them
    return path


def fresh_read(path: Path) -> tuple[object, list[int]]:
    """The whole frame as a new store (a fresh kernel) reads it, and the ids above which it read rows."""
    store = SQLiteStore(SQLiteFile(path))
    spy = Spy(store)
    try:
        return store.frame(), spy.after
    finally:
        store.close()


def checked_read(path: Path) -> list[int]:
    """A fresh store's whole frame, checked against an uncached read; the ids above which it read rows."""
    frame, after = fresh_read(path)
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]
    return after


def packed(path: Path) -> int:
    store = SQLiteStore(SQLiteFile(path))
    try:
        return _framechunks.pack(store)
    finally:
        store.close()


def chunks(path: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT after_id, last_id, row_count FROM frame_chunks ORDER BY after_id").fetchall()


def test_a_fresh_store_reads_the_chunks_and_only_the_rows_above_them(path: Path) -> None:
    assert packed(path) == 4
    assert chunks(path) == [(0, 20, 20), (20, 40, 20), (40, 60, 20), (60, 80, 20)]
    assert packed(path) == 0, "packed once"
    assert checked_read(path) == [80], "the rows of no chunk only"
    models = set(fresh_read(path)[0]["model"])  # type: ignore[index]
    assert "ünïcödé 模型" in models and "gpt-4o\n\x1f" in models


def test_rows_appended_after_packing_and_an_unpacked_ledger_are_read_whole(path: Path) -> None:
    assert checked_read(path) == [0]
    packed(path)
    appended(path, random_rows(30, seed=2))
    assert checked_read(path) == [80]


def test_a_chunk_whose_range_lost_a_row_is_passed_over(path: Path) -> None:
    packed(path)
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM usage WHERE id = 27")
    assert checked_read(path) == [20, 80], "the stale chunk's rows are read, and the rows above the chunks"


def test_a_row_committed_into_a_packed_range_later_is_read(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM usage WHERE id = 33")  # as a PostgreSQL id handed out, not yet committed
    packed(path)
    assert chunks(path)[1] == (20, 41, 20)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE usage SET id = 33 WHERE id = 95")  # it commits now, inside the packed range
    frame, after = fresh_read(path)
    assert 20 in after and len(frame) == 94  # type: ignore[arg-type]
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]


def damaged(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def not_data(data: bytes) -> bytes:
    """The same arrays, but one said to be of dtype object: it must never be decoded (no pickle, no pointers)."""
    head, _, body = data.partition(b"\n")
    about = json.loads(head)
    about[0][1] = "object"
    return json.dumps(about).encode() + b"\n" + body


def lying_lengths(data: bytes) -> bytes:
    head, _, body = data.partition(b"\n")
    about = json.loads(head)
    about[-1][2] += 1
    return json.dumps(about).encode() + b"\n" + body


def bad_codes(data: bytes) -> bytes:
    """A well-formed chunk whose string codes point past the strings it holds."""
    head, _, packed_body = data.partition(b"\n")
    body = bytearray(zlib.decompress(packed_body))
    at = 0
    for name, dtype, length in json.loads(head):
        size = {"int64": 8, "int32": 4, "uint8": 1, "bool": 1, "float64": 8}[dtype] * length
        if name == "model.codes":
            body[at : at + 4] = (1000).to_bytes(4, "little")
        at += size
    return head + b"\n" + zlib.compress(bytes(body))


@pytest.mark.parametrize("damage", [damaged, flipped, not_data, lying_lengths, bad_codes])
def test_a_damaged_chunk_is_passed_over(path: Path, damage: object) -> None:
    packed(path)
    with sqlite3.connect(path) as connection:
        data = connection.execute("SELECT data FROM frame_chunks WHERE after_id = 40").fetchone()[0]
        connection.execute("UPDATE frame_chunks SET data = ? WHERE after_id = 40", [damage(data)])  # type: ignore[operator]
    assert checked_read(path) == [40, 80]


def test_a_chunk_of_another_format_is_passed_over_and_packed_again(path: Path) -> None:
    packed(path)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE frame_chunks SET format = 'ipyllm-frame-0' WHERE after_id = 0")
    assert checked_read(path) == [0, 80]
    store = SQLiteStore(SQLiteFile(path))
    uid = store.read("SELECT uid FROM usage WHERE id = 20")[0][0]
    blob = _framechunks._encoded(*store.frame_rows(" WHERE id <= 20", [], list(COLUMNS)))
    store.put_chunk([0, 20, 20, uid, FORMAT, blob])
    store.close()
    assert fresh_read(path)[1] == [80], "a chunk of this format replaces the other one"


def test_a_store_packs_as_it_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ipyllm._framecache.CHECK_EVERY", 10)
    path = tmp_path / "ledger.sqlite"
    store = SQLiteStore(SQLiteFile(path))
    for row in random_rows(9, seed=3):
        store.append(row)
    assert store.frames._packer is None, "not before 10 rows"
    for row in random_rows(41, seed=4):
        store.append(row)
    assert store.frames._packer is not None
    store.frames._packer.join(10)
    assert [last for _, last, _ in chunks(path)] == [20, 40]
    store.close()
    assert checked_read(path) == [40]


def test_reading_many_unpacked_rows_packs_them_for_the_next_reader(path: Path) -> None:
    store = SQLiteStore(SQLiteFile(path))
    store.frame()
    assert store.frames._packer is not None
    store.frames._packer.join(10)
    store.close()
    assert len(chunks(path)) == 4
    assert fresh_read(path)[1] == [80]


def test_two_kernels_packing_at_once_leave_one_chunk_per_range(path: Path) -> None:
    stores = [SQLiteStore(SQLiteFile(path)) for _ in range(2)]
    start = threading.Barrier(2)

    def pack(store: SQLiteStore) -> None:
        start.wait()
        _framechunks.pack(store)

    threads = [threading.Thread(target=pack, args=[store]) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for store in stores:
        store.close()
    assert [(after, last) for after, last, _ in chunks(path)] == [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert checked_read(path) == [80]


def test_a_fresh_process_reads_the_chunks(path: Path, tmp_path: Path) -> None:
    packed(path)
    script = (
        "import sys, json; import ipyllm; from ipyllm import _api, _framechunks; _framechunks.CHUNK_ROWS = 20\n"
        "ipyllm.config.update(usage_db=sys.argv[1]); store = _api.session.records.store(); read = store.frame_rows; after = []\n"
        "store.frame_rows = lambda where, parameters, names: after.append(parameters[-2]) or read(where, parameters, names)\n"
        "frame = ipyllm.usage(all_sessions=True); frame.to_pickle(sys.argv[2]); print(json.dumps(after))\n"
    )
    saved = tmp_path / "frame.pkl"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "IPYLLM_CACHE_DIR": ""}
    command = [sys.executable, "-c", script, str(path), str(saved)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [80]
    import pandas as pd

    assert_frame_equal(pd.read_pickle(saved), uncached(path))
