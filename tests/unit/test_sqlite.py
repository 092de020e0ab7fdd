"""The SQLite ledger: persistence, several writers, broken files, migrations (a killed kernel: tests/kernel/test_ledger.py)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import ipyllm
from ipyllm import _api
from ipyllm._locations import SQLiteFile, default_usage_db
from ipyllm._sqlite import SCHEMA_VERSION, SQLiteStore
from ipyllm._usage import COLUMNS, UsageRow
from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import ledger_rows, older_ledger


def test_each_call_is_committed_to_the_default_ledger(live: StubServer, capfd: pytest.CaptureFixture[str]) -> None:
    path = default_usage_db().path
    assert path == Path(os.environ["JUPYTER_DATA_DIR"]) / "ipyllm" / "usage.sqlite"
    reply = ipyllm.complete("persist me")
    rows = ledger_rows(path)  # read by another connection: the insert is committed
    assert rows == [(ipyllm.SESSION_ID, "gpt-4o-mini", "ok", pytest.approx(reply.usage.cost_usd))]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert SECRET not in path.read_bytes().decode(errors="replace")
    assert capfd.readouterr().err == ""


def test_memory_keeps_rows_in_this_session_only(live: StubServer, tmp_path: Path) -> None:
    ipyllm.config.usage_db = ":memory:"
    ipyllm.complete("not persisted")
    assert not default_usage_db().path.exists()
    assert len(ipyllm.usage()) == 1 and len(ipyllm.usage(all_sessions=True)) == 1


def test_all_sessions_reads_the_whole_ledger_with_the_same_dtypes(live: StubServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ipyllm.config.usage_db = str(path)
    earlier = SQLiteStore(SQLiteFile(path))
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    earlier.append(UsageRow(timestamp=yesterday, session="earlier", cell=4, model="gpt-4o", prompt_tokens=5, cost_usd=0.25))
    earlier.append(UsageRow(timestamp=yesterday, session="earlier", model="local", status="error", error="X: y"))
    earlier.close()
    ipyllm.complete("now")
    mine, everything = ipyllm.usage(), ipyllm.usage(all_sessions=True)
    assert len(mine) == 1 and len(everything) == 3
    assert list(everything["session"]) == ["earlier", "earlier", ipyllm.SESSION_ID]
    assert {k: str(v) for k, v in everything.dtypes.items()} == COLUMNS
    assert everything.loc[0, "cell"] == 4 and everything.loc[0, "cost_usd"] == 0.25
    assert everything["cost_usd"].isna().tolist() == [False, True, False], "an unknown cost stays NaN, not 0"
    assert everything.loc[0, "timestamp"].to_pydatetime() == pytest.approx(yesterday, abs=timedelta(milliseconds=1))


WRITER = textwrap.dedent(
    """
    import sys, ipyllm
    ipyllm.config.update(base_url=sys.argv[1], api_key="sk-writer", usage_db=sys.argv[2])
    for i in range(int(sys.argv[3])):
        ipyllm.complete(f"call {i}")
    print(ipyllm.SESSION_ID)
    """
)


def test_two_processes_write_one_ledger_at_once(stub: StubServer, tmp_path: Path) -> None:
    path, calls = tmp_path / "shared.sqlite", 300
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, stub.base_url, str(path), str(calls)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    results = [w.communicate(timeout=240) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err for _, err in results]
    assert all(err == "" for _, err in results), "no ledger warnings"
    sessions = [out.strip() for out, _ in results]
    rows = ledger_rows(path)
    assert len(rows) == 2 * calls == len(stub.requests)
    assert sorted({r[0] for r in rows}) == sorted(sessions)
    assert all(sum(r[0] == s for r in rows) == calls for s in sessions)


def one_warning(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ipyllm: cannot use the usage ledger ")
    assert "rows are kept in memory for this session" in lines[0]
    for word in words:
        assert word in lines[0]


def test_a_corrupt_ledger_never_breaks_a_call(live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database, just bytes " * 100)
    ipyllm.config.usage_db = str(path)
    first, second = ipyllm.complete("one"), ipyllm.complete("two")
    assert (first.usage.status, second.usage.status) == ("ok", "ok")
    one_warning(capfd.readouterr().err, str(path), "not a database", "move the broken file away")
    assert len(ipyllm.usage()) == 2 and len(ipyllm.usage(all_sessions=True)) == 2


def test_a_locked_ledger_never_breaks_a_call(live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "locked.sqlite"
    SQLiteStore(SQLiteFile(path)).count()  # create it
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        ipyllm.config.usage_db = str(path)
        _api.session.records._stores[str(path)] = SQLiteStore(SQLiteFile(path), busy_timeout=0.2)
        assert ipyllm.complete("one").usage.status == "ok"
        one_warning(capfd.readouterr().err, "locked", "another program holds it")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(ipyllm.usage()) == 1


READ_ONLY = textwrap.dedent(
    """
    import sys, ipyllm
    ipyllm.config.update(base_url=sys.argv[1], api_key="sk-reader", usage_db=sys.argv[2])
    print(ipyllm.complete("one").usage.status, ipyllm.complete("two").usage.status, len(ipyllm.usage()))
    """
)


def test_a_read_only_directory_never_breaks_a_call(stub: StubServer, tmp_path: Path) -> None:
    locked = tmp_path / "ledger"
    locked.mkdir()
    locked.chmod(0o555)
    command = [sys.executable, "-c", READ_ONLY, stub.base_url, str(locked / "usage.sqlite")]
    if os.geteuid() == 0:
        # Root writes anywhere; in a user namespace without a mapping it keeps uid 0 but loses that power.
        assert shutil.which("unshare"), "the read-only test needs unshare (util-linux) when run as root"
        command = ["unshare", "--user", *command]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "ok", "2"]
    one_warning(result.stderr, "unable to open database file", "set LLM_USAGE_DB")
    assert list(locked.iterdir()) == []


def test_an_old_ledger_is_migrated_forward_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    older_ledger(path, 1, "INSERT INTO usage (timestamp_us, session, model, status) VALUES (1, 'old', 'gpt-4o', 'ok')")
    store = SQLiteStore(SQLiteFile(path))
    assert store.count() == 1
    store.cache_put("k", "chat", "gpt-4o", "{}")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.frame().loc[0, "session"] == "old"


def test_a_ledger_from_a_newer_ipyllm_is_left_alone(live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "newer.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    ipyllm.config.usage_db = str(path)
    assert ipyllm.complete("hi").usage.status == "ok"
    one_warning(capfd.readouterr().err, "newer than this ipyllm", "upgrade ipyllm")
