"""The whole ledger's frame kept on disk: a fresh process checks and extends it instead of reading every row; a file
that is damaged, foreign or would run code is ignored and replaced; it is its owner's only; no copy is kept where
``IPYLLM_CACHE_DIR`` is empty."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from pandas.testing import assert_frame_equal

from ipyllm import _framefile
from ipyllm._framefile import frame_file, identity_of, load
from ipyllm._locations import SQLiteFile, parse_location

from ..helpers import ROOT
from ..ledgerviews import random_rows
from .test_framecache import Spy, appended, later, uncached


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    appended(path, random_rows(80, seed=1))
    return path


def kept(path: Path) -> Path:
    found = frame_file(identity_of(SQLiteFile(path)))
    assert found is not None
    return found


def read_by_a_new_store(path: Path, exclude: str | None = None) -> tuple[object, list[int]]:
    """The whole frame as a new store (as in a fresh kernel) reads it, and what it read from the ledger."""
    from ipyllm._sqlite import SQLiteStore

    store = SQLiteStore(SQLiteFile(path))
    spy = Spy(store)
    try:
        return store.frame(exclude), spy.after
    finally:
        store.close()


def test_a_fresh_process_reads_only_the_rows_added_since_the_frame_was_kept(path: Path, tmp_path: Path) -> None:
    script = (
        "import sys; from ipyllm._locations import SQLiteFile; from ipyllm._sqlite import SQLiteStore\n"
        "SQLiteStore(SQLiteFile(sys.argv[1])).frame()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    file = kept(path)
    assert file.is_file() and file.parent.parent == tmp_path / "cache"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600, "the owner's only"
    snapshot = load(identity_of(SQLiteFile(path)))
    assert snapshot is not None and snapshot.mark.count == 80
    appended(path, random_rows(3, seed=2))
    frame, after = read_by_a_new_store(path)
    assert after == [snapshot.mark.top], "only the rows above the kept frame's mark are read"
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]
    excluded, after = read_by_a_new_store(path, exclude="s2")
    assert after == [snapshot.mark.top]
    assert_frame_equal(excluded, uncached(path, "s2"))  # type: ignore[arg-type]


def test_the_file_is_rewritten_once_the_ledger_has_grown_by_a_twentieth(path: Path) -> None:
    read_by_a_new_store(path)
    identity = identity_of(SQLiteFile(path))
    appended(path, random_rows(4, seed=2))  # 4 of 80: not yet
    read_by_a_new_store(path)
    assert load(identity).mark.count == 80  # type: ignore[union-attr]
    appended(path, later(random_rows(1, seed=3), timedelta(days=1)))
    read_by_a_new_store(path)
    assert load(identity).mark.count == 85  # type: ignore[union-attr]
    frame, after = read_by_a_new_store(path)
    assert after == [] and len(frame) == 85  # type: ignore[arg-type]


def test_a_file_made_again_with_as_many_rows_is_not_taken_for_the_kept_frame(path: Path) -> None:
    read_by_a_new_store(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    appended(path, random_rows(80, seed=9))
    frame, after = read_by_a_new_store(path)
    assert after == [0]
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]
    assert load(identity_of(SQLiteFile(path))).mark.uid == uncached_uid(path)  # type: ignore[union-attr]


def uncached_uid(path: Path) -> str:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return str(connection.execute("SELECT uid FROM usage ORDER BY id DESC LIMIT 1").fetchone()[0])


def damage_flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    file.write_bytes(bytes(data))


def damage_truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 3])


def damage_garbage(file: Path) -> None:
    file.write_bytes(b"not a frame at all" * 100)


def damage_codes(file: Path) -> None:
    """A well-formed file whose codes point past the strings it holds."""
    with np.load(file, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["model.codes"] = arrays["model.codes"] + 1000
    with open(file, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_garbage, damage_codes])
def test_a_damaged_file_is_ignored_and_replaced(path: Path, damage: object) -> None:
    read_by_a_new_store(path)
    damage(kept(path))  # type: ignore[operator]
    assert load(identity_of(SQLiteFile(path))) is None
    frame, after = read_by_a_new_store(path)
    assert after == [0], "the ledger is read whole"
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]
    assert load(identity_of(SQLiteFile(path))) is not None, "and the file replaced"


class Boom:
    """Unpickled, it would leave a mark: a frame file must never run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_file_that_would_run_code_is_not_unpickled(path: Path, tmp_path: Path) -> None:
    read_by_a_new_store(path)
    marker = tmp_path / "ran"
    with np.load(kept(path), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["ids"] = np.array([Boom(marker)], dtype=object)
    with open(kept(path), "wb") as handle:
        np.savez(handle, **arrays)
    assert zipfile.is_zipfile(kept(path))
    frame, after = read_by_a_new_store(path)
    assert not marker.exists()
    assert after == [0]
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]


def test_another_ledgers_file_is_not_taken(path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    appended(other, random_rows(80, seed=5))
    read_by_a_new_store(other)
    kept(other).replace(kept(path))
    assert load(identity_of(SQLiteFile(path))) is None
    frame, after = read_by_a_new_store(path)
    assert after == [0]
    assert_frame_equal(frame, uncached(path))  # type: ignore[arg-type]


def test_no_file_is_kept_where_the_cache_directory_is_set_empty(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPYLLM_CACHE_DIR", "")
    assert frame_file("sqlite:/anything") is None
    read_by_a_new_store(path)
    _, after = read_by_a_new_store(path)
    assert after == [0]
    assert not (tmp_path / "cache").exists()


def test_a_servers_identity_and_file_name_hold_no_password() -> None:
    server = parse_location("postgresql://ada:s3cret-Pa55@db.example:5433/team?sslmode=require")
    identity = identity_of(server)  # type: ignore[arg-type]
    assert identity == "postgresql:db.example:5433:team:ada"
    assert "s3cret" not in str(frame_file(identity))
    assert frame_file(identity) != frame_file(identity_of(parse_location("postgresql://bob@db.example:5433/team")))  # type: ignore[arg-type]


def test_the_default_directory_is_the_users_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IPYLLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(_framefile.sys, "platform", "linux")
    assert frame_file("x") == tmp_path / "xdg" / "ipyllm" / "frames" / f"{_framefile.hashlib.sha256(b'x').hexdigest()[:32]}.npz"
