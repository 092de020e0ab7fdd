"""Provider batches in the ledger (``_batchledger``, the stores' ``batch_*`` methods): recorded, updated, listed by
map, and their results taken once, in one transaction with the rows, the cache entries and the hold's end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ipyllm._batchclaim import STALE_SECONDS, Claim
from ipyllm._batchledger import BatchRecord, batch_values, record_of
from ipyllm._locations import SQLiteFile
from ipyllm._sqlite import SQLiteStore
from ipyllm._sqlschema import SCHEMA_VERSION
from ipyllm._store import Hold, Limit, MemoryLedger
from ipyllm._usage import UsageRow


def record(batch_id: str = "batch_1", **changes: object) -> BatchRecord:
    base = BatchRecord(batch_id, "openai", "gpt-4o-mini", "map-key", ("k1", "k2"), input_file_id="file-1", user="ada", hold_id="hold-1")
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_a_record_survives_the_table_both_ways() -> None:
    original = record(ended=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), estimate_usd=0.25, output_cap=16)
    assert record_of(batch_values(original)) == original


def test_sqlite_records_updates_and_takes_a_batch_once(tmp_path: Path) -> None:
    store = SQLiteStore(SQLiteFile(tmp_path / "ledger.sqlite"))
    now = datetime.now(timezone.utc)
    hold = Hold("hold-1", 0.5, "s1", "ada", "host", 0, now, now + timedelta(hours=25))
    assert isinstance(store.reserve(hold, [Limit("daily_budget_usd", 1.0, now - timedelta(hours=1))]), Hold)
    store.batch_add(record())
    store.batch_add(record("batch_2", map_key="other"))
    store.batch_update(record(status="completed", completed=2, total=2, output_file_id="file-out"))
    [found] = store.batches(map_key="map-key")
    assert (found.status, found.completed, found.output_file_id, found.keys) == ("completed", 2, "file-out", ("k1", "k2"))
    rows = [UsageRow(model="gpt-4o-mini", cost_usd=0.01, tier="batch", batch="batch_1") for _ in range(2)]
    entries = [("k1", "chat", "gpt-4o-mini", '{"text": "yes"}')]
    assert store.batch_collect("batch_1", rows, entries, "hold-1") is True
    assert store.batch_collect("batch_1", rows, entries, "hold-1") is False  # a second kernel writes nothing
    store.batch_update(record(status="in_progress"))  # a late look does not undo the collection
    with sqlite3.connect(tmp_path / "ledger.sqlite") as connection:
        assert connection.execute("SELECT COUNT(*), SUM(cost_usd) FROM usage WHERE tier = 'batch'").fetchone() == (2, 0.02)
        assert connection.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)
        assert connection.execute("SELECT payload FROM cache WHERE key = 'k1'").fetchone() == ('{"text": "yes"}',)
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert [r.status for r in store.batches(batch_id="batch_1")] == ["collected"]
    assert [r.id for r in store.batches()] == ["batch_1", "batch_2"]
    store.close()


def test_the_memory_ledger_keeps_batches_of_a_session_without_a_ledger() -> None:
    memory = MemoryLedger()
    memory.batch_add(record())
    memory.batch_update(record(status="completed"))
    assert [r.status for r in memory.batches(map_key="map-key")] == ["completed"]
    assert memory.batch_collect("batch_1") is True and memory.batch_collect("batch_1") is False
    assert memory.batches(batch_id="batch_1")[0].done


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_map_is_claimed_once_until_released_or_left_stale(tmp_path: Path) -> None:
    sqlite = SQLiteStore(SQLiteFile(tmp_path / "ledger.sqlite"))
    for store in (sqlite, MemoryLedger()):
        first = Claim("map-key", "s1", "ada", "here", rows=30)
        assert store.batch_claim(first) is None
        assert store.batch_claim(Claim("map-key", "s2", "bob", "here")) == first  # the holder, as recorded
        assert store.batch_claim(Claim("other-map", "s2", "bob", "here")) is None  # another map is another claim
        store.batch_unclaim(Claim("map-key", "s2", "bob", "here"))  # another's claim is left alone
        assert store.batch_claim(Claim("map-key", "s2", "bob", "here")) == first
        store.batch_unclaim(first)
        second = Claim("map-key", "s2", "bob", "here")
        assert store.batch_claim(second) is None
        # Stale: its process is gone (on the same host only), or it is older than STALE_SECONDS.
        store.batch_unclaim(second)
        assert store.batch_claim(Claim("map-key", "s3", host="there", pid=dead_pid())) is None
        assert store.batch_claim(Claim("map-key", "s4", host="here")) is not None  # another host's pid is not asked
        old = datetime.now(timezone.utc) - timedelta(seconds=STALE_SECONDS + 1)
        for left in (Claim("map-key2", "s5", host="here", pid=dead_pid()), Claim("map-key3", "s5", host="here", created=old)):
            assert store.batch_claim(left) is None
            taker = Claim(left.map_key, "s6", host="here", pid=os.getpid())
            assert store.batch_claim(taker) is None
            assert store.batch_claim(Claim(left.map_key, "s7", host="here")) == taker
    with sqlite3.connect(tmp_path / "ledger.sqlite") as connection:
        rows = connection.execute("SELECT map_key, session FROM batch_claims ORDER BY map_key").fetchall()
    assert rows == [("map-key", "s3"), ("map-key2", "s6"), ("map-key3", "s6"), ("other-map", "s2")]
    sqlite.close()
