"""A ledger file that vanishes or cannot be written mid-run: watched, spooled, written back once (issue 17).

How a ledger is made unwritable here: its directory is moved aside and a regular file put in its place. The
tests run as root, for whom ``chmod`` changes nothing; with a file where the directory was, nothing can be
opened or created under it, for root too, at once (a lock held by another process would fail a write only
after the busy timeout), and moving the directory back makes the same file writable again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ipyllm
from ipyllm import _api
from ipyllm._locations import SQLiteFile
from ipyllm._spool import Spool, spool_path
from ipyllm._sqlite import SCHEMA_VERSION, SQLiteStore
from ipyllm._store import Headroom, Hold, Limit
from ipyllm._usage import UsageRow, row_values
from ipyllm.testing import StubServer

from ..helpers import ROOT, chat_requests, older_ledger

#: $0.001 per output token: a call with max_tokens=10 may cost $0.01.
PRICED = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}


def unwritable(directory: Path) -> Path:
    """Put a regular file where the ledger's directory was; returns where the directory went."""
    aside = directory.with_name(directory.name + "-aside")
    os.rename(directory, aside)
    directory.write_text("a file where the ledger's directory was\n")
    return aside


def writable_again(directory: Path, aside: Path) -> None:
    directory.unlink()
    os.rename(aside, directory)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the ledger file as another program would (read-only: never creates it)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(sql).fetchall()


def rows_in(path: Path) -> int:
    try:
        return int(query(path, "SELECT COUNT(*) FROM usage")[0][0])
    except sqlite3.Error:
        return 0


def said(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- a real map, in a process of its own --------------------------------------------------------------------

MAP = textwrap.dedent(
    """
    import sys, ipyllm
    ipyllm.config.update(base_url=sys.argv[1], api_key="sk-map")
    result = ipyllm.map("row {value}", [f"item {i}" for i in range(int(sys.argv[2]))], concurrency=2, progress=False)
    print(int(result.notna().sum()), ipyllm.last_batch().id)
    """
)


def test_the_ledger_directory_deleted_mid_map_is_recreated_with_every_row(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger" / "usage.sqlite"
    data = tmp_path / "jupyter-data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_DATA_DIR": str(data), "LLM_USAGE_DB": str(ledger)}
    total = 80
    with StubServer(delay=0.05) as stub:
        command = [sys.executable, "-c", MAP, stub.base_url, str(total)]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            while rows_in(ledger) < 10 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            shutil.rmtree(ledger.parent)
            assert process.poll() is None, "the map ended before its ledger was deleted"
            out, err = process.communicate(timeout=180)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, err
        answered, batch = out.split()
        assert int(answered) == total == len(chat_requests(stub))
    lines = said(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ipyllm: the usage ledger {ledger} was moved or deleted while in use: recreated at its path with the ")
    assert "to start an empty ledger, delete it while no kernel has it open" in lines[0]
    # Every row of the map is in the recreated ledger, once, with its answer for a resume; none waits in the spool.
    rows = query(ledger, "SELECT COUNT(*), COUNT(DISTINCT uid), MIN(batch), MAX(batch), MIN(status) FROM usage")
    assert rows == [(total, total, batch, batch, "ok")]
    assert query(ledger, "SELECT COUNT(*) FROM cache") == [(total,)]
    spools = list((data / "ipyllm" / "spool").glob("*.sqlite"))
    assert all(Spool(path).waiting() == (0, 0) for path in spools)


# -- unwritable, and writable again ---------------------------------------------------------------------------


def test_an_unwritable_ledger_mid_map_keeps_every_row_and_answer_for_the_second_run(
    live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ledger"
    ledger = directory / "usage.sqlite"
    ipyllm.config.update(usage_db=str(ledger))
    live.delay = 0.05
    items, total = [f"item {i}" for i in range(40)], 40
    moved: list[Path] = []

    def when_ten_rows_are_in() -> None:
        deadline = time.monotonic() + 60
        while rows_in(ledger) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        moved.append(unwritable(directory))

    swapper = threading.Thread(target=when_ten_rows_are_in)
    swapper.start()
    first = ipyllm.map("row {value}", items, concurrency=2, progress=False)
    swapper.join()
    assert first.notna().all() and len(chat_requests(live)) == total
    spool = Spool(spool_path(SQLiteFile(ledger)))
    lines = said(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"ipyllm: cannot use the usage ledger {ledger} (it was moved or deleted while in use and cannot be recreated: "
        f"{directory} is not a directory): rows are kept in memory for this session and wait in {spool.path} until it "
        "can be written again; restore its directory or set LLM_USAGE_DB to a file that can be written"
    )
    waiting, answers = spool.waiting()
    in_ledger = rows_in(moved[0] / "usage.sqlite")
    assert waiting > 0 and answers > 0 and in_ledger >= 10
    assert in_ledger + waiting == total

    writable_again(directory, moved[0])
    second = ipyllm.map("row {value}", items, concurrency=2, progress=False)
    assert second.tolist() == first.tolist()
    assert len(chat_requests(live)) == total, "nothing answered was sent again"
    assert len(ipyllm.usage(all_sessions=True)) == 2 * total  # reading the ledger writes what waits first
    rows = query(ledger, "SELECT status, COUNT(*), COUNT(DISTINCT uid) FROM usage GROUP BY status ORDER BY status")
    assert rows == [("cached", total, total), ("ok", total, total)]
    assert query(ledger, "SELECT COUNT(*) FROM cache") == [(total,)]
    assert spool.waiting() == (0, 0)
    lines = said(capfd.readouterr().err)
    back = rf"ipyllm: the usage ledger {re.escape(str(ledger))} can be written again: \d+ waiting rows written"
    assert len(lines) == 1 and re.fullmatch(back, lines[0]), lines


def test_with_a_daily_budget_an_outage_is_one_line_and_the_ledger_is_kept(
    live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "ledger"
    ledger = directory / "usage.sqlite"
    ipyllm.config.update(usage_db=str(ledger), prices=PRICED, daily_budget_usd=1.0)
    ipyllm.complete("before", max_tokens=10)
    aside = unwritable(directory)
    for index in range(3):
        assert ipyllm.complete(f"while unwritable {index}", max_tokens=10).usage.status == "ok"
    lines = said(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"ipyllm: cannot use the usage ledger {ledger} ("), lines
    writable_again(directory, aside)
    ipyllm.complete("after", max_tokens=10)
    store = _api.session.store()
    assert isinstance(store, SQLiteStore), "the ledger is not given up"
    assert store.count() == 5
    assert query(ledger, "SELECT COUNT(DISTINCT uid) FROM usage") == [(5,)]
    assert query(ledger, "SELECT COUNT(*) FROM holds") == [(0,)]


def test_each_outage_is_said_once_and_so_is_its_end(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "ledger"
    store = SQLiteStore(SQLiteFile(directory / "usage.sqlite"))
    store.append(UsageRow(session="s", model="first"))
    for outage in range(2):
        aside = unwritable(directory)
        for index in range(3):
            store.append(UsageRow(session="s", model=f"outage {outage} row {index}"))
        writable_again(directory, aside)
        assert store.count() == 1 + 3 * (outage + 1)
    lines = said(capfd.readouterr().err)
    assert [line.split(" (")[0].split(":")[1].strip() for line in lines] == [
        f"cannot use the usage ledger {directory / 'usage.sqlite'}",
        f"the usage ledger {directory / 'usage.sqlite'} can be written again",
    ] * 2
    assert all(line.endswith("3 waiting rows written") for line in lines[1::2])
    store.close()


def test_cache_lookups_while_the_ledger_cannot_be_written_see_the_spooled_answers(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    ledger = directory / "usage.sqlite"
    store = SQLiteStore(SQLiteFile(ledger))
    store.cache_put("before", "chat", "m", '{"text": "answered before"}')
    aside = unwritable(directory)
    store.cache_put("during", "chat", "m", '{"text": "answered during"}')
    store.append_many([UsageRow(session="s", model="m")], [("in a batch", "chat", "m", '{"text": "batch"}')])
    expected = {"before": '{"text": "answered before"}', "during": '{"text": "answered during"}', "in a batch": '{"text": "batch"}'}
    assert store.cache_get_many(["before", "during", "in a batch", "never"]) == expected
    assert store.cache_get("during") == expected["during"]
    writable_again(directory, aside)
    assert store.cache_get_many(["before", "during", "in a batch", "never"]) == expected
    assert store.count() == 1
    assert dict(query(ledger, "SELECT key, payload FROM cache")) == expected
    assert store.file.spool.waiting() == (0, 0)
    store.close()


# -- a file that vanished --------------------------------------------------------------------------------------


def hold(name: str, amount: float) -> Hold:
    now = datetime.now(timezone.utc)
    return Hold(name, amount, "mine", "ada", "here", os.getpid(), now, now + timedelta(minutes=5))


def test_a_deleted_ledger_is_noticed_before_the_next_write_and_recreated_with_all_it_held(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger" / "usage.sqlite"
    store = SQLiteStore(SQLiteFile(ledger))
    store.append(UsageRow(session="mine", model="a", cost_usd=0.1))
    other = SQLiteStore(SQLiteFile(ledger))  # another kernel on the same file
    other.append(UsageRow(session="theirs", model="b", cost_usd=0.2))
    other.close()
    store.cache_put("key", "chat", "a", '{"text": "kept"}')
    assert isinstance(store.reserve(hold("in flight", 0.5), []), Hold)
    shutil.rmtree(ledger.parent)
    assert store.file.connection is not None
    # A row that reached the file after it vanished (between the check and the write) is copied too.
    store.file.connection.execute("INSERT INTO usage (uid, timestamp_us, session, model) VALUES ('late', 1, 'mine', 'late')")
    store.append(UsageRow(session="mine", model="c", cost_usd=0.3))
    assert query(ledger, "SELECT session, model FROM usage ORDER BY session, model") == [
        ("mine", "a"), ("mine", "c"), ("mine", "late"), ("theirs", "b"),
    ]  # fmt: skip
    assert query(ledger, "SELECT COUNT(DISTINCT uid) FROM usage") == [(4,)]
    assert query(ledger, "SELECT key FROM cache") == [("key",)]
    # The hold of the call in flight came along: a budget still counts it, so it cannot be passed.
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    refusal = store.reserve(hold("next", 0.5), [Limit("daily_budget_usd", 1.0, midnight)])
    assert isinstance(refusal, Headroom) and (refusal.spent, refusal.held) == (pytest.approx(0.1 + 0.2 + 0.3), pytest.approx(0.5))
    store.append(UsageRow(session="mine", model="d", cost_usd=0.1), release="in flight")  # the call ends: its row settles the hold
    assert query(ledger, "SELECT COUNT(*) FROM holds") == [(0,)]
    lines = said(capfd.readouterr().err)
    assert lines == [
        f"ipyllm: the usage ledger {ledger} was moved or deleted while in use: recreated at its path with the 3 rows it held "
        "(every session's), its cached answers and budget holds; to start an empty ledger, delete it while no kernel has it open"
    ]
    # Deleted again: noticed again, before the next write.
    ledger.unlink()
    store.append(UsageRow(session="mine", model="e"))
    assert rows_in(ledger) == 6
    assert len(said(capfd.readouterr().err)) == 1
    store.close()


def test_a_replaced_ledger_gets_the_rows_merged_each_once(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "usage.sqlite"
    store = SQLiteStore(SQLiteFile(ledger))
    store.append(UsageRow(session="mine", model="a"))
    elsewhere = SQLiteStore(SQLiteFile(tmp_path / "elsewhere.sqlite"))
    elsewhere.append(UsageRow(session="theirs", model="b"))
    elsewhere.close()
    os.replace(tmp_path / "elsewhere.sqlite", ledger)
    store.append(UsageRow(session="mine", model="c"))
    assert query(ledger, "SELECT model FROM usage ORDER BY model") == [("a",), ("b",), ("c",)]
    lines = said(capfd.readouterr().err)
    assert len(lines) == 1 and "was replaced while in use: merged into the file now at its path with the 1 row it held" in lines[0]
    # Replaced by a copy of itself (a backup put back): every row is there already, and is not written twice.
    with closing(sqlite3.connect(ledger)) as source, closing(sqlite3.connect(tmp_path / "backup.sqlite")) as backup:
        source.backup(backup)
    os.replace(tmp_path / "backup.sqlite", ledger)
    store.append(UsageRow(session="mine", model="d"))
    assert query(ledger, "SELECT model FROM usage ORDER BY model") == [("a",), ("b",), ("c",), ("d",)]
    store.close()


def test_the_check_for_a_vanished_file_costs_microseconds(tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    store = SQLiteStore(SQLiteFile(ledger))
    store.count()
    assert store.file.at_path()
    calls = 5000
    started = time.perf_counter()
    for _ in range(calls):
        store.file.at_path()
    each = (time.perf_counter() - started) / calls
    assert each < 50e-6, f"{each * 1e6:.1f} µs per check"  # ~5 µs on the 2-core test machine, 10 µs under load
    os.rename(ledger, tmp_path / "moved.sqlite")
    assert not store.file.at_path()
    store.close()


# -- the spool ---------------------------------------------------------------------------------------------------


def test_the_spool_keeps_rows_and_answers_across_processes_in_order(tmp_path: Path) -> None:
    row = UsageRow(session="s", cell=3, model="m", prompt_tokens=5, tokens_estimated=True, status="error", error="X: y")
    values = row_values(row)
    spool = Spool(tmp_path / "spool" / "waiting.sqlite")
    assert spool.waiting() == (0, 0) and spool.peek() == [] and spool.cached(["k"]) == {}
    spool.put_many([("u1", None, values), ("u2", "a hold", None)], [("k", 5, "chat", "m", '{"text": "first"}')])
    spool.put("u1", None, values)  # the same uid again: kept once
    spool.close()
    again = Spool(tmp_path / "spool" / "waiting.sqlite")  # as the next process finds it
    assert again.peek() == [(1, "u1", None, values), (2, "u2", "a hold", None)]
    assert again.cached(["k", "missing"]) == {"k": '{"text": "first"}'}
    assert again.waiting() == (2, 1) and len(again) == 2
    again.put_many([], [("k", 6, "chat", "m", '{"text": "second"}')])  # the latest answer per key
    assert again.cached(["k"]) == {"k": '{"text": "second"}'}
    [(seq, entry)] = again.peek_cache()
    assert entry == ("k", 6, "chat", "m", '{"text": "second"}')
    again.drop(1)
    again.drop_cache(seq)
    assert again.waiting() == (1, 0) and again.peek()[0][1] == "u2"
    again.close()


KILLED = textwrap.dedent(
    """
    import os, sys
    from ipyllm._usage import UsageRow
    from ipyllm._sqlite import SQLiteStore
    from ipyllm._locations import SQLiteFile
    store = SQLiteStore(SQLiteFile(sys.argv[1]))
    store.append(UsageRow(session="killed", model="one", cost_usd=0.01))
    store.append_many([UsageRow(session="killed", model="two")], [("answer", "chat", "two", '{"text": "kept"}')])
    os._exit(9)  # killed: nothing runs at exit
    """
)


def test_rows_spooled_by_a_killed_process_are_written_once_by_the_next(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    ledger = directory / "usage.sqlite"
    directory.write_text("a file where the ledger's directory should be\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLED, str(ledger)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert len(said(killed.stderr)) == 1 and "wait in" in killed.stderr
    directory.unlink()
    first, second = SQLiteStore(SQLiteFile(ledger)), SQLiteStore(SQLiteFile(ledger))
    assert first.count() == 2 and first.cache_get("answer") == '{"text": "kept"}'
    assert second.count() == 2
    assert query(ledger, "SELECT model, session FROM usage ORDER BY model") == [("one", "killed"), ("two", "killed")]
    first.close()
    second.close()


def test_two_kernels_opening_a_new_ledger_at_the_same_moment_both_use_it(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Switching a new file to WAL mode is not covered by SQLite's busy timeout: without trying again, about one
    opening in twenty (two connections at once) got "database is locked", and that kernel took the ledger for
    unusable, its daily budget counting its own calls only (two maps then spent past it)."""
    for attempt in range(100):
        path = tmp_path / f"ledger-{attempt}.sqlite"
        spool = tmp_path / f"spool-{attempt}.sqlite"  # one spool for both, as kernels on one team ledger share it
        start, failures = threading.Barrier(2), []
        threads = [threading.Thread(target=open_at_once, args=(path, spool, start, failures)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert failures == [], f"opening {attempt}"
        assert "ipyllm:" not in capfd.readouterr().err, f"opening {attempt}"
        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("SELECT COUNT(*) FROM usage").fetchone() == (2,)


def open_at_once(path: Path, spool: Path, start: threading.Barrier, failures: list[Exception]) -> None:
    """A kernel's first write to the ledger ``path`` and its first use of the spool file ``spool``, after ``start``."""
    store = SQLiteStore(SQLiteFile(path), spool=spool)
    try:
        start.wait()
        store.append(UsageRow(model="m", cost_usd=0.01))
        Spool(spool).open()
    except Exception as error:
        failures.append(error)
    finally:
        store.close()


def test_an_older_ledger_gets_a_unique_id_for_every_row(tmp_path: Path) -> None:
    ledger = tmp_path / "old.sqlite"
    older_ledger(ledger, 3, *(f"INSERT INTO usage (timestamp_us, session, model) VALUES ({t}, 'old', 'm')" for t in (1, 2, 3)))
    store = SQLiteStore(SQLiteFile(ledger))
    assert store.count() == 3
    assert query(ledger, "SELECT COUNT(DISTINCT uid), COUNT(uid) FROM usage") == [(3, 3)]
    assert query(ledger, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    with closing(sqlite3.connect(ledger)) as connection, pytest.raises(sqlite3.IntegrityError):
        uid = connection.execute("SELECT uid FROM usage LIMIT 1").fetchone()[0]
        connection.execute("INSERT INTO usage (uid, timestamp_us) VALUES (?, 4)", [uid])
    store.close()


def test_a_version_4_ledger_gains_the_cache_writes_and_the_tier_its_rows_were_bought_live(tmp_path: Path) -> None:
    ledger = tmp_path / "v4.sqlite"
    older_ledger(ledger, 4, "INSERT INTO usage (uid, timestamp_us, session, model, cost_usd) VALUES ('u', 1, 'old', 'm', 0.5)")
    store = SQLiteStore(SQLiteFile(ledger))
    store.append(UsageRow(session="new", model="m", cache_creation_tokens=1200, tier="batch", cost_usd=0.25))
    frame = store.frame()
    assert list(frame["tier"]) == ["live", "batch"]
    assert frame["cache_creation_tokens"].isna().tolist() == [True, False] and frame["cache_creation_tokens"].iloc[1] == 1200
    assert frame["tier"].dtype == "string" and frame["cache_creation_tokens"].dtype == "Int64"
    store.close()


def test_a_version_7_ledger_gains_the_images_its_rows_read_back_unknown(tmp_path: Path) -> None:
    ledger = tmp_path / "v7.sqlite"
    older_ledger(ledger, 7, "INSERT INTO usage (uid, timestamp_us, session, model, cost_usd) VALUES ('u', 1, 'old', 'm', 0.5)")
    store = SQLiteStore(SQLiteFile(ledger))
    store.append(UsageRow(session="new", model="m", images=2, cost_usd=0.25))
    frame = store.frame()
    assert frame["images"].dtype == "Int64"
    assert frame["images"].isna().tolist() == [True, False] and frame["images"].iloc[1] == 2
    store.close()
    assert query(ledger, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(ledger, "SELECT session, images FROM usage ORDER BY id") == [("old", None), ("new", 2)]
    again = SQLiteStore(SQLiteFile(ledger))  # another kernel reads the file
    assert again.frame()["images"].tolist() == [pd.NA, 2]
    again.close()


def test_a_row_spooled_before_issue_20_is_written_back_without_images(tmp_path: Path) -> None:
    # From issue 19 a spooled row is a dict by column name; one spooled before issue 20 has no "images".
    row = UsageRow(session="older", model="m", prompt_tokens=7, cost_usd=0.125, tier="batch")
    values = row_values(row)
    named = {n: v for n, v in zip(UsageRow.__dataclass_fields__, values, strict=True) if n != "images"}
    waiting = tmp_path / "spool.sqlite"
    with closing(sqlite3.connect(waiting)) as connection:
        connection.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT UNIQUE, release TEXT, row_values TEXT)")
        connection.execute("INSERT INTO spool (uid, release, row_values) VALUES ('old', NULL, ?)", [json.dumps(named)])
        connection.commit()
    spool = Spool(waiting)
    [(_, uid, _, loaded)] = spool.peek()
    assert uid == "old" and loaded == values  # images None: unknown, as the row's default
    spool.close()


def test_a_row_spooled_by_an_older_ipyllm_is_written_back_with_the_new_columns_defaulted(tmp_path: Path) -> None:
    # Before issue 19 a spooled row was a list of the 20 columns it had (no cache_creation_tokens, no images, no tier).
    row = UsageRow(session="older", model="m", prompt_tokens=7, cost_usd=0.125, status="ok", user="ada")
    values = row_values(row)
    newer = ("cache_creation_tokens", "images", "tier")
    older = [v for name, v in zip(UsageRow.__dataclass_fields__, values, strict=True) if name not in newer]
    waiting = tmp_path / "spool.sqlite"
    spool = Spool(waiting)
    spool.put("new", None, values)
    spool.close()
    with closing(sqlite3.connect(waiting)) as connection:
        connection.execute("INSERT INTO spool (uid, release, row_values) VALUES ('old', NULL, ?)", [json.dumps(older)])
        connection.commit()
    again = Spool(waiting)
    [(_, _, _, new), (_, _, _, old)] = again.peek()
    assert new == values and old == values  # the older row: tier "live" and no cache writes, as it was bought
    again.close()
