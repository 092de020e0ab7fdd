"""The ledger's views on a real PostgreSQL server: the same checks as on SQLite files (tests/unit/test_views.py):
grouped figures and ``%llm_usage``'s table equal pandas on a random team ledger, the running totals equal the rows,
the team's summary, ``usage()``'s filters on the server, and the notebook column, NA for older rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm._ledger import open_store
from ipyllm._locations import parse_location
from ipyllm._pgschema import MIGRATIONS
from ipyllm._postgres import PostgresStore
from ipyllm._totals import BACKFILL, LEVELS
from ipyllm._usage import UsageRow
from ipyllm._usageview import usage_table
from ipyllm._views import Window, grouped, latest, summary
from ipyllm.testing import StubServer

from ..ledgerviews import NOW, SINCE, UNTIL, WINDOWS, check_grouped, check_tables, folded_calls, random_rows
from .pg import PostgresServer


@pytest.fixture
def database(pg: PostgresServer) -> str:
    return pg.new_database()


@pytest.fixture
def store(pg: PostgresServer, database: str) -> Iterator[PostgresStore]:
    opened = open_store(parse_location(pg.url(database)))
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()


def test_grouped_and_tables_equal_pandas_on_a_random_team_ledger(store: PostgresStore) -> None:
    rows = random_rows(500, seed=17)
    store.append_many(rows)
    assert store.flush()
    frame = store.frame()
    assert len(frame) == 500
    check_grouped(store, frame)
    check_grouped(store, frame, SINCE, UNTIL)
    for window in WINDOWS:
        check_tables(store, frame, window)


def test_the_running_totals_equal_the_rows(store: PostgresStore, pg: PostgresServer, database: str) -> None:
    store.append_many(random_rows(300, seed=4))
    assert store.flush()
    for (table, _), backfill in zip(LEVELS, BACKFILL, strict=True):
        kept = sorted(pg.sql(f"SELECT * FROM {table}", database=database))
        pg.sql(f"CREATE TABLE again AS SELECT * FROM {table} WHERE false", database=database)
        pg.sql(backfill.replace(f"INSERT INTO {table}", "INSERT INTO again"), database=database)
        made = sorted(pg.sql("SELECT * FROM again", database=database))
        pg.sql("DROP TABLE again", database=database)
        assert len(kept) == len(made) > 10
        for a, b in zip(kept, made, strict=True):
            assert a[:6] == b[:6] and a[6:] == pytest.approx(b[6:])


def test_summary_on_a_team_ledger_shows_the_team(store: PostgresStore) -> None:
    now = datetime.now(timezone.utc)
    store.append_many(
        [
            UsageRow(timestamp=now, user="ada", cost_usd=0.5),
            UsageRow(timestamp=now, user="bob", cost_usd=4.0, status="error"),
            UsageRow(timestamp=now - timedelta(days=2), user="ada", cost_usd=100.0),
        ]
    )
    assert store.flush()
    seen = summary(store, user="ada", budgets={"daily_budget_usd": 5.0, "user_daily_budget_usd": 1.0, "budget_usd": 2.0})
    assert seen["team"] is True and seen["ledger"] == "postgresql"
    assert seen["today"] == {"cost_usd": 0.5, "calls": 1, "errors": 0, "refused": 0}
    assert seen["team_today"] == {"cost_usd": 4.5, "calls": 2, "errors": 1, "refused": 0}
    assert [(b["scope"], b["spent_usd"], b["left_usd"]) for b in seen["budgets"]] == [
        ("team", 4.5, 0.5),
        ("user", 0.5, 0.5),
        ("session", None, None),
    ]
    assert seen["level"] == "warn"
    assert [c["user"] for c in latest(store, limit=2)] == ["ada", "bob"] or [c["user"] for c in latest(store, limit=2)] == ["bob", "ada"]
    assert "password" not in repr(seen) and "pw-" not in repr(seen)


def test_older_rows_read_the_notebook_as_na_and_count_in_the_totals(pg: PostgresServer, database: str) -> None:
    pg.sql("CREATE TABLE schema_version (version INTEGER NOT NULL)", database=database)
    for statements in MIGRATIONS[:7]:  # issue 20's schema: no notebook column, no totals
        for statement in statements:
            pg.sql(statement, database=database)
    pg.sql("INSERT INTO schema_version (version) VALUES (7)", database=database)
    pg.sql("INSERT INTO usage (uid, timestamp_us, session, model, cost_usd) VALUES ('o1', 1000, 'old', 'gpt-4o', 0.25)", database=database)
    store = open_store(parse_location(pg.url(database)))
    assert isinstance(store, PostgresStore)
    try:
        store.append(UsageRow(timestamp=NOW, session="new", model="gpt-4o", cost_usd=0.5, notebook="n.ipynb"))
        assert store.flush()
        assert store.frame()["notebook"].tolist() == [pd.NA, "n.ipynb"]
        assert {g["key"]: (g["calls"], g["cost_usd"]) for g in grouped(store, "notebook")} == {None: (1, 0.25), "n.ipynb": (1, 0.5)}
        assert folded_calls(store, "model", Window()) == {"gpt-4o": 2}, "the old row is in the totals"
    finally:
        store.close()


def test_usage_filters_and_llm_usage_all_on_the_server(ip: Any, live: StubServer, pg: PostgresServer, database: str) -> None:
    url = pg.url(database)
    other = open_store(parse_location(url))
    assert isinstance(other, PostgresStore)
    other.append_many(random_rows(300, seed=21, sessions=("s1", "s2")))
    assert other.flush()
    other.close()
    ipyllm.config.update(usage_db=url)
    with capture_output():
        ip.run_cell("%llm one")
    everything = ipyllm.usage(all_sessions=True)
    assert len(everything) == 301
    since = NOW - timedelta(days=1, minutes=3)
    chosen = ipyllm.usage(all_sessions=True, since=since, where={"user": "ada", "status": ["ok", None]}, columns=["user", "status"])
    expected = everything[
        (everything["timestamp"] >= pd.Timestamp(since))
        & (everything["user"] == "ada").fillna(False)
        & ((everything["status"] == "ok").fillna(False) | everything["status"].isna())
    ][["timestamp", "status", "user"]].reset_index(drop=True)  # in the frame's order
    assert len(expected) > 5
    pd.testing.assert_frame_equal(chosen, expected)
    for by in ("model", "notebook", "user", "day"):
        table = ip.run_line_magic("llm_usage", f"--all --by {by}")
        pd.testing.assert_frame_equal(table, usage_table(everything, by, ipyllm.config.prices), check_exact=False, rtol=1e-9, atol=1e-12)
    for store in ipyllm._api.session.records._stores.values():
        if store is not None:
            store.close()
