"""The ledger's views (``ipyllm._views``) on real SQLite files: grouped figures, ``%llm_usage``'s table, today's
summary and the latest calls equal what pandas makes of the whole frame; the running totals the trigger keeps equal
the rows; ``usage()``'s filters run in the database; the ``notebook`` column, NA for older rows."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api
from ipyllm._locations import SQLiteFile
from ipyllm._sqlite import SQLiteStore
from ipyllm._totals import BACKFILL, LEVELS
from ipyllm._usage import UsageRow, to_frame
from ipyllm._usageview import usage_table
from ipyllm._views import Window, grouped, latest, memory_reader, summary
from ipyllm.errors import InvalidInputError
from ipyllm.testing import StubServer

from ..helpers import older_ledger
from ..ledgerviews import NOW, SINCE, UNTIL, WINDOWS, check_grouped, check_tables, folded_calls, random_rows


@pytest.fixture
def store(tmp_path: Path) -> Any:
    ledger = SQLiteStore(SQLiteFile(tmp_path / "ledger.sqlite"))
    yield ledger
    ledger.close()


def test_grouped_and_tables_equal_pandas_on_a_random_ledger(store: SQLiteStore) -> None:
    rows = random_rows(600, seed=7)
    for row in rows[:50]:
        store.append(row)  # one at a time, as calls end (the trigger's path)
    store.append_many(rows[50:])
    frame = store.frame()
    assert len(frame) == 600
    check_grouped(store, frame)
    check_grouped(store, frame, SINCE, UNTIL)
    for window in WINDOWS:
        check_tables(store, frame, window)


def test_the_running_totals_equal_the_rows(store: SQLiteStore, tmp_path: Path) -> None:
    rows = random_rows(300, seed=3)
    for row in rows:
        store.append(row)
    store.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as connection:
        for (table, _), backfill in zip(LEVELS, BACKFILL, strict=True):
            kept = sorted(connection.execute(f"SELECT * FROM {table}").fetchall())
            connection.execute(f"CREATE TEMP TABLE again AS SELECT * FROM {table} WHERE 0")
            connection.execute(backfill.replace(f"INSERT INTO {table}", "INSERT INTO again"))
            made = sorted(connection.execute("SELECT * FROM again").fetchall())
            connection.execute("DROP TABLE again")
            assert len(kept) == len(made) > 10
            for a, b in zip(kept, made, strict=True):
                assert a[:6] == b[:6] and a[6:] == pytest.approx(b[6:])


def test_memory_rows_are_read_through_the_same_sql() -> None:
    rows = random_rows(200, seed=11)
    reader = memory_reader(rows)
    check_grouped(reader, to_frame(rows))  # type: ignore[arg-type]


def test_summary_counts_today_and_says_how_close_the_budgets_are(store: SQLiteStore) -> None:
    now = datetime.now(timezone.utc)
    midnight = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    store.append(UsageRow(timestamp=midnight - timedelta(seconds=1), user="ada", cost_usd=9.0))  # yesterday
    store.append(UsageRow(timestamp=max(midnight, now - timedelta(minutes=1)), user="ada", cost_usd=0.5))
    store.append(UsageRow(timestamp=now, user="bob", cost_usd=1.0, status="error"))
    first = summary(store, user="ada", budgets={"daily_budget_usd": 1.6, "user_daily_budget_usd": 2.0, "budget_usd": None})
    assert first["today"] == {"cost_usd": 0.5, "calls": 1, "errors": 0, "refused": 0}
    assert first["team_today"] is None and first["team"] is False and first["ledger"] == "sqlite"
    assert [(b["name"], b["scope"], b["spent_usd"]) for b in first["budgets"]] == [
        ("daily_budget_usd", "everyone", 1.5),
        ("user_daily_budget_usd", "user", 0.5),
    ]
    assert first["budgets"][0]["left_usd"] == pytest.approx(0.1)
    assert first["level"] == "warn", "1.5 of 1.6 is over 80 %"
    assert first["last_row"] == now.isoformat()
    assert first["day_start"] == midnight.isoformat()
    store.append(UsageRow(timestamp=now, user="ada", cost_usd=0.0, status="over_budget"))
    second = summary(store, user="ada", budgets={"user_daily_budget_usd": 20.0})
    assert second["level"] == "over", "a refused call today"
    assert second["today"]["refused"] == 1 and second["version"] != first["version"]
    assert summary(store, user="ada", budgets={})["level"] == "ok"
    with pytest.raises(InvalidInputError, match="no budget setting 'nope'"):
        summary(store, user="ada", budgets={"nope": 1.0})


def test_latest_calls_newest_first_without_prompts_unless_asked(store: SQLiteStore) -> None:
    for n in range(5):
        store.append(UsageRow(timestamp=NOW + timedelta(seconds=n), model=f"m{n}", source="secret prompt", user="ada" if n % 2 else "bob"))
    calls = latest(store, limit=3)
    assert [c["model"] for c in calls] == ["m4", "m3", "m2"]
    assert all("source" not in c for c in calls) and "secret prompt" not in repr(calls)
    assert calls[0]["timestamp"] == (NOW + timedelta(seconds=4)).isoformat() and calls[0]["cost_usd"] is None
    assert [c["model"] for c in latest(store, user="ada")] == ["m3", "m1"]
    assert latest(store, limit=1, prompts=True)[0]["source"] == "secret prompt"


def test_grouped_refuses_an_unknown_grouping_in_one_line(store: SQLiteStore) -> None:
    with pytest.raises(InvalidInputError) as caught:
        grouped(store, "colour")
    assert "\n" not in str(caught.value) and "model, day, hour, notebook" in str(caught.value)


# -- usage(): filters in the database, the frame column-wise ----------------------------------------------------


def test_usage_filters_run_in_the_database(live: StubServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    other = SQLiteStore(SQLiteFile(path))
    other.append_many(random_rows(400, seed=5))
    other.close()
    ipyllm.config.update(usage_db=str(path))
    ipyllm.complete("mine")  # this session's row, in memory and in the file
    everything = ipyllm.usage(all_sessions=True)
    assert len(everything) == 401
    since, until = NOW - timedelta(days=1, minutes=3), NOW - timedelta(hours=2)
    where = {"model": ["gpt-4o", None], "status": ["ok", "cached"]}
    chosen = ipyllm.usage(all_sessions=True, since=since, until=until, where=where, columns=["model", "cost_usd", "status"])
    assert list(chosen.columns) == ["timestamp", "model", "cost_usd", "status"]
    expected = everything[
        (everything["timestamp"] >= pd.Timestamp(since))
        & (everything["timestamp"] < pd.Timestamp(until))
        & (everything["model"].isin(["gpt-4o"]).fillna(False) | everything["model"].isna())
        & everything["status"].isin(["ok", "cached"]).fillna(False)
    ][["timestamp", "model", "cost_usd", "status"]].reset_index(drop=True)
    assert len(expected) > 10
    pd.testing.assert_frame_equal(chosen, expected)
    # The same filters on this session's rows, in memory.
    assert len(ipyllm.usage(where={"model": "gpt-4o-mini"})) == 1 and ipyllm.usage(where={"model": "gpt-4o"}).empty
    assert len(ipyllm.usage(since="2000-01-01")) == 1 and ipyllm.usage(until=datetime(2000, 1, 1)).empty


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"where": {"colour": "red"}}, "where: no column 'colour' to filter on"),
        ({"columns": ["model", "colour"]}, "columns: the usage frame has no column 'colour'"),
        ({"since": "yesterday"}, "since: 'yesterday' is not a time"),
        ({"until": 3}, "until: give a datetime, a date or an ISO 8601 string, not int"),
    ],
)
def test_usage_refuses_unknown_columns_and_times_in_one_line(options: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        ipyllm.usage(all_sessions=True, **options)
    assert str(caught.value).startswith(said) and "\n" not in str(caught.value)


# -- the notebook column -----------------------------------------------------------------------------------------


def test_a_row_records_the_notebook_jupyter_names(live: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ipyllm.config.update(usage_db=str(path))
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ada/work/analysis.ipynb")
    ipyllm.complete("one")
    monkeypatch.delenv("JPY_SESSION_NAME")
    ipyllm.complete("two")  # a console or a script: NA
    assert ipyllm.usage()["notebook"].tolist() == ["/home/ada/work/analysis.ipynb", pd.NA]
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT notebook FROM usage ORDER BY id").fetchall() == [("/home/ada/work/analysis.ipynb",), (None,)]


def test_older_rows_read_the_notebook_as_na_and_count_in_the_totals(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    older_ledger(
        path,
        8,  # issue 20's schema: no notebook column, no totals
        "INSERT INTO usage (uid, timestamp_us, session, model, cost_usd, status) VALUES ('u1', 1000, 'old', 'gpt-4o', 0.25, 'ok')",
        "INSERT INTO usage (uid, timestamp_us, session, model, cost_usd, status) VALUES ('u2', 2000, 'old', 'gpt-4o', NULL, 'error')",
    )
    store = SQLiteStore(SQLiteFile(path))
    try:
        store.append(UsageRow(timestamp=NOW, session="new", model="gpt-4o", cost_usd=0.5, notebook="n.ipynb"))
        frame = store.frame()
        assert frame["notebook"].isna().tolist() == [True, True, False]
        assert {g["key"]: (g["calls"], g["cost_usd"], g["errors"]) for g in grouped(store, "notebook")} == {
            None: (2, 0.25, 1),
            "n.ipynb": (1, 0.5, 0),
        }
        assert folded_calls(store, "model", Window()) == {"gpt-4o": 3}, "the old rows are in the totals"
    finally:
        store.close()


# -- %llm_usage on the database's sums ----------------------------------------------------------------------------


def test_llm_usage_all_reads_other_sessions_from_the_database(ip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "team.sqlite"
    other = SQLiteStore(SQLiteFile(path))
    other.append_many(random_rows(300, seed=9, sessions=("s1", "s2")))
    other.close()
    ipyllm.config.update(usage_db=str(path))
    monkeypatch.setenv("JPY_SESSION_NAME", "mine.ipynb")
    with capture_output():
        ip.run_cell("%llm one")
        ip.run_cell("%llm two")
    own = ip.run_line_magic("llm_usage", "--by notebook")
    assert list(own.index) == ["mine.ipynb", "total"] and own.loc["total", "calls"] == 2
    for by in ("model", "notebook", "day", "cell", "user"):
        table = ip.run_line_magic("llm_usage", f"--all --by {by}")
        expected = usage_table(ipyllm.usage(all_sessions=True), by, ipyllm.config.prices)
        pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-9, atol=1e-12, obj=by)
        assert table.loc["total", "calls"] == 302 and table["cost_usd"].dtype == "Float64" and table["calls"].dtype == "Int64"


def test_a_sessions_own_llm_usage_does_not_read_the_ledger(ip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ipyllm.config.update(usage_db=str(tmp_path / "ledger.sqlite"))
    with capture_output():
        ip.run_cell("%llm one")
    monkeypatch.setattr(SQLiteStore, "read", lambda *_: pytest.fail("the ledger was read"))
    monkeypatch.setattr(SQLiteStore, "frame", lambda *_: pytest.fail("the ledger was read"))
    table = ip.run_line_magic("llm_usage", "")
    assert table.loc["total", "calls"] == 1 and not math.isnan(table.loc["total", "cost_usd"])
    assert _api.session.records.memory.rows()
