"""The team ledger on a real PostgreSQL server, started by these tests in a temporary directory (no mock).

Calls go over real HTTP to the stub server; several tests run whole Python processes (each its own
kernel-like session) against one database. Skipped when PostgreSQL is not installed, except under
``CI=true``, where a missing server fails the tests instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import ipyllm
from ipyllm import _api
from ipyllm._batchclaim import Claim
from ipyllm._ledger import open_store
from ipyllm._locations import Server, parse_location
from ipyllm._pgschema import MIGRATIONS, SCHEMA_VERSION
from ipyllm._spool import Spool
from ipyllm._store import Headroom, Hold, Limit
from ipyllm._usage import COLUMNS, UsageRow
from ipyllm.testing import BatchScript, Fault, StubServer

from ..helpers import ROOT, free_port, wait_for
from .pg import PostgresServer

#: $0.001 per output token and max_tokens=10: every call to the stub costs exactly $0.01.
PRICED = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}


@pytest.fixture
def team(pg: PostgresServer, live: StubServer, capfd: pytest.CaptureFixture[str]) -> Iterator[str]:
    """The session writing to a fresh database on the server; its stores are closed at the end."""
    url = pg.url(pg.new_database())
    ipyllm.config.update(usage_db=url, prices=PRICED)
    yield url
    for store in _api.session.records._stores.values():
        if store is not None:
            store.close()


def rows_in(pg: PostgresServer, database: str) -> int:
    """Rows in the database's ledger (-1 before any kernel has created it)."""
    import psycopg

    try:
        return int(pg.sql("SELECT COUNT(*) FROM usage", database=database)[0][0])
    except psycopg.errors.UndefinedTable:
        return -1


def ledger_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ipyllm:")]


# -- worker processes ----------------------------------------------------------------------------------------

WORKER = """
import json, os, sys, threading, time
import ipyllm
from ipyllm._litellm import load_litellm

args = json.loads(sys.argv[1])
load_litellm()
ipyllm.config.update(**args["config"])
open(args["go"] + f".ready.{os.getpid()}", "w").close()
while not os.path.exists(args["go"]):
    time.sleep(0.01)
results = {"ok": 0, "refused": 0, "errors": [], "refusals": []}
lock = threading.Lock()

def work(thread):
    for call in range(args["calls"]):
        try:
            ipyllm.complete(f"process {os.getpid()} thread {thread} call {call} says hello to the stub, at length", max_tokens=10)
        except ipyllm.BudgetExceededError as error:
            with lock:
                results["refused"] += 1
                results["refusals"].append(str(error))
            return
        except Exception as error:
            with lock:
                results["errors"].append(repr(error))
        else:
            with lock:
                results["ok"] += 1

threads = [threading.Thread(target=work, args=(i,)) for i in range(args["threads"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def run_workers(tmp_path: Path, count: int, config: dict[str, Any], calls: int, threads: int = 1) -> list[dict[str, Any]]:
    """``count`` Python processes, each making ``threads`` x ``calls`` calls, started together."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data")}
    argument = json.dumps({"config": config, "calls": calls, "threads": threads, "go": str(go)})
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, argument], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
        for _ in range(count)
    ]
    assert wait_for(lambda: len(list(tmp_path.glob("go.ready.*"))) == count, timeout=180), "the workers did not start"
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append({**json.loads(out.strip().splitlines()[-1]), "stderr": err})
    return results


def worker_config(stub: StubServer, url: str, **settings: Any) -> dict[str, Any]:
    return {"base_url": stub.base_url, "api_key": "sk-worker", "usage_db": url, "prices": PRICED, "timeout": 30, **settings}


def test_four_processes_of_100_calls_leave_400_rows(pg: PostgresServer, stub: StubServer, tmp_path: Path) -> None:
    database = pg.new_database()
    results = run_workers(tmp_path, 4, worker_config(stub, pg.url(database)), calls=100)
    assert [r["ok"] for r in results] == [100] * 4 and not [r["errors"] for r in results if r["errors"]]
    assert not [ledger_lines(r["stderr"]) for r in results if ledger_lines(r["stderr"])]
    assert pg.sql("SELECT COUNT(*), COUNT(DISTINCT uid), COUNT(DISTINCT session) FROM usage", database=database) == [(400, 400, 4)]
    assert pg.sql("SELECT version FROM schema_version", database=database) == [(SCHEMA_VERSION,)]
    assert len(stub.requests) == 400


def test_two_processes_at_concurrency_16_never_pass_a_shared_daily_budget(pg: PostgresServer, stub: StubServer, tmp_path: Path) -> None:
    database = pg.new_database()
    stub.script(*[Fault.slow(0.2)] * 60)  # calls stay in flight while the others decide
    config = worker_config(stub, pg.url(database), daily_budget_usd=0.25)
    results = run_workers(tmp_path, 2, config, calls=10, threads=16)
    assert all(not r["errors"] for r in results)
    spent, sent = pg.sql("SELECT COALESCE(SUM(cost_usd), 0), COUNT(*) FROM usage WHERE status = 'ok'", database=database)[0]
    assert spent <= 0.25 + 1e-9 and sent == sum(r["ok"] for r in results) == len(stub.requests)
    assert sent >= 20  # the budget was used, not refused wholesale
    refusals = [line for r in results for line in r["refusals"]]
    assert len(refusals) == 32  # every thread ends refused
    assert all(
        re.match(
            r"^budget: spent \$\S+(, \$\S+ held by \d+ calls? in flight,)? of \$0\.25 today; "
            r"this call needs at least \$0\.0100 \(its input and 10 output tokens\): raise daily_budget_usd",
            x,
        )
        for x in refusals
    )
    assert pg.sql("SELECT COUNT(*) FROM holds", database=database) == [(0,)]


# -- in this process ----------------------------------------------------------------------------------------


def test_the_store_migrates_once_when_many_open_it_at_once(pg: PostgresServer, tmp_path: Path) -> None:
    database = pg.new_database()
    url = parse_location(pg.url(database))
    stores = [open_store(url) for _ in range(8)]
    counts: list[int] = []
    threads = [threading.Thread(target=lambda s=s: counts.append(s.count())) for s in stores]  # type: ignore[misc]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [0] * 8
    assert pg.sql("SELECT version FROM schema_version", database=database) == [(SCHEMA_VERSION,)]
    for store in stores:
        assert store is not None
        store.close()


def test_a_ledger_at_the_previous_version_gains_images_and_a_new_row_keeps_them(pg: PostgresServer) -> None:
    database = pg.new_database()
    previous = SCHEMA_VERSION - 1
    pg.sql("CREATE TABLE schema_version (version INTEGER NOT NULL)", database=database)
    for statements in MIGRATIONS[:previous]:
        for statement in statements:
            pg.sql(statement, database=database)
    pg.sql("INSERT INTO schema_version (version) VALUES (%s)", [previous], database=database)
    pg.sql("INSERT INTO usage (uid, timestamp_us, session, model) VALUES ('old', 1, 'older', 'm')", database=database)
    store = open_store(parse_location(pg.url(database)))
    assert store is not None
    store.append(UsageRow(session="newer", model="m", images=2))
    assert store.flush()  # type: ignore[attr-defined]
    assert pg.sql("SELECT version FROM schema_version", database=database) == [(SCHEMA_VERSION,)]
    assert pg.sql("SELECT session, images FROM usage ORDER BY id", database=database) == [("older", None), ("newer", 2)]
    frame = store.frame()
    assert frame["images"].dtype == "Int64" and frame["images"].tolist() == [pd.NA, 2]
    assert list(frame.columns) == list(COLUMNS)
    store.close()


def test_a_user_budget_refuses_one_user_while_another_goes_on(team: str, pg: PostgresServer) -> None:
    store = open_store(parse_location(team))
    assert store is not None
    store.append(UsageRow(session="elsewhere", model="gpt-4o-mini", cost_usd=0.5, user="carol"))
    assert store.flush()  # type: ignore[attr-defined]
    ipyllm.config.update(user="ada", user_daily_budget_usd=0.03)
    for _ in range(3):
        ipyllm.complete("ada asks says hello to the stub, at length", max_tokens=10)
    with pytest.raises(ipyllm.BudgetExceededError) as refused:
        ipyllm.complete("ada asks again says hello to the stub, at length", max_tokens=10)
    assert str(refused.value.message) == (
        "budget: spent $0.0300 of $0.03 today by ada (team $0.5300); this call needs at least $0.0100 (its input and 10 output tokens): "
        "raise user_daily_budget_usd to go on"
    )
    ipyllm.config.update(user="bob")
    for _ in range(3):
        ipyllm.complete("bob asks says hello to the stub, at length", max_tokens=10)
    frame = ipyllm.usage(all_sessions=True)
    by_user = frame[frame["status"] == "ok"].groupby("user")["cost_usd"].sum()
    assert by_user.to_dict() == pytest.approx({"ada": 0.03, "bob": 0.03, "carol": 0.5})
    # The team's limit names the user's share.
    ipyllm.config.update(user="ada", user_daily_budget_usd=None, daily_budget_usd=0.565)
    with pytest.raises(ipyllm.BudgetExceededError) as refused:
        ipyllm.complete("ada asks the team says hello to the stub, at length", max_tokens=10)
    assert refused.value.message.startswith("budget: spent $0.5600 of $0.5650 today (ada $0.0300 of it); ")
    store.close()


def test_the_server_stopped_mid_run_and_restarted_gets_every_row_once(
    team: str, pg: PostgresServer, capfd: pytest.CaptureFixture[str]
) -> None:
    database = team.rsplit("/", 1)[1]
    store = open_store(parse_location(team))
    assert store is not None
    store.append(UsageRow(session="theirs", model="gpt-4o-mini", cost_usd=0.5, user="carol"))
    store.close()  # writes what waits
    ipyllm.config.update(daily_budget_usd=5.0)
    for index in range(10):
        ipyllm.complete(f"before {index} says hello to the stub, at length", max_tokens=10)
    assert _api.session.store().flush()  # type: ignore[union-attr]
    pg.stop()
    try:
        started = time.perf_counter()
        for index in range(10):
            ipyllm.complete(f"while away {index} says hello to the stub, at length", max_tokens=10)
        assert time.perf_counter() - started < 20  # no call waits for the server
        offline = capfd.readouterr().err
        assert len(ledger_lines(offline)) == 2, offline  # the server is away; how budgets are counted meanwhile
        assert "cannot use the team ledger" in offline and "budgets count the spend last read" in offline
        # Known: carol's $0.50 read before the server went, and this kernel's 20 calls: $0.70.
        with pytest.raises(ipyllm.BudgetExceededError) as refused:
            ipyllm.complete("too much says hello to the stub, at length", max_tokens=10, daily_budget_usd=0.705)
        assert refused.value.message.startswith("budget: spent $0.7000 of $0.7050 today;")
        ipyllm.complete("still within says hello to the stub, at length", max_tokens=10, daily_budget_usd=0.72)
    finally:
        pg.start()
    # Every row: carol's, 21 ok and one refused, once each, in the order they were made.
    err = ""

    def back() -> bool:
        nonlocal err
        err += capfd.readouterr().err
        return "is back: 12 waiting rows written" in err

    assert wait_for(back), err
    rows = pg.sql("SELECT status, COUNT(*), COUNT(DISTINCT uid) FROM usage GROUP BY status ORDER BY status", database=database)
    assert rows == [("ok", 22, 22), ("over_budget", 1, 1)]
    assert pg.sql("SELECT COUNT(*) FROM holds", database=database) == [(0,)]
    order = [r[0] for r in pg.sql("SELECT timestamp_us FROM usage ORDER BY id", database=database)]
    assert order == sorted(order)
    ipyllm.complete("after says hello to the stub, at length", max_tokens=10)
    assert wait_for(lambda: rows_in(pg, database) == 24)
    assert ledger_lines(err) == [f"ipyllm: the team ledger {_api.session.store().name} is back: 12 waiting rows written"]  # type: ignore[union-attr]


def test_a_kernel_killed_while_the_server_is_away_loses_nothing(pg: PostgresServer, stub: StubServer, tmp_path: Path) -> None:
    database = pg.new_database()
    url = pg.url(database)
    config = worker_config(stub, url)
    pg.stop()
    try:
        code = (
            f"import ipyllm, os; ipyllm.config.update(**{config!r})\n"
            "for i in range(5): ipyllm.complete(f'alone {i}', max_tokens=10)\n"
            "os._exit(9)  # killed: nothing runs at exit"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data")}
        killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert killed.returncode == 9, killed.stderr
    finally:
        pg.start()
    # The next kernel on the machine writes what the killed one left.
    code = f"import ipyllm; ipyllm.config.update(**{config!r}); print(len(ipyllm.usage(all_sessions=True)))"
    later = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert later.stdout.strip() == "5" and not ledger_lines(later.stderr), later.stderr
    assert pg.sql("SELECT COUNT(*), COUNT(DISTINCT uid) FROM usage", database=database) == [(5, 5)]


def test_a_wrong_password_says_one_line_and_the_rows_are_written_later(
    pg: PostgresServer, live: StubServer, capfd: pytest.CaptureFixture[str]
) -> None:
    database = pg.new_database()
    right, wrong = "right-" + os.urandom(6).hex(), "wrong-" + os.urandom(6).hex()
    if pg.sql("SELECT 1 FROM pg_roles WHERE rolname = 'ada'"):
        pg.sql(f"ALTER ROLE ada PASSWORD '{right}'")
    else:
        pg.sql(f"CREATE ROLE ada LOGIN PASSWORD '{right}'")
    pg.sql(f"ALTER DATABASE {database} OWNER TO ada")
    pg.sql("GRANT ALL ON SCHEMA public TO ada", database=database)
    url = f"postgresql://ada:{wrong}@127.0.0.1:{pg.port}/{database}"
    ipyllm.config.update(usage_db=url, prices=PRICED)
    try:
        replies = [ipyllm.complete(f"call {i} says hello to the stub, at length", max_tokens=10) for i in range(5)]
        assert all(reply.usage.status == "ok" for reply in replies)
        # The spool's writer meets the refusal on its own thread, maybe after the calls have returned (CI saw it
        # said just after them once), and says so once, not once per row.
        err = ""

        def said() -> bool:
            nonlocal err
            err += capfd.readouterr().err
            return bool(ledger_lines(err))

        assert wait_for(said, timeout=10), err
        time.sleep(0.5)
        err += capfd.readouterr().err
        lines = ledger_lines(err)
        assert len(lines) == 1 and "password authentication failed" in lines[0] and "rows wait in" in lines[0], err
        assert wrong not in err and "ada:****@" in lines[0]
        # The administrator gives the role that password: the waiting rows arrive, once.
        pg.sql(f"ALTER ROLE ada PASSWORD '{wrong}'")
        assert wait_for(lambda: rows_in(pg, database) == 5)
        assert pg.sql("SELECT COUNT(DISTINCT uid) FROM usage", database=database) == [(5,)]
    finally:
        for store in _api.session.records._stores.values():
            if store is not None:
                store.close()
    everything = capfd.readouterr()
    assert wrong not in everything.out + everything.err


def test_a_read_only_database_keeps_the_rows_until_it_can_be_written(
    team: str, pg: PostgresServer, capfd: pytest.CaptureFixture[str]
) -> None:
    database = team.rsplit("/", 1)[1]
    ipyllm.complete("migrates the ledger says hello to the stub, at length", max_tokens=10)
    for store in _api.session.records._stores.values():
        assert store is not None
        store.close()
    _api.session.records._stores.clear()
    pg.sql(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
    try:
        for index in range(3):
            ipyllm.complete(f"read only {index} says hello to the stub, at length", max_tokens=10)
        said: list[str] = []
        # The spool's writer meets the read-only server on its own thread, maybe after the calls have returned.
        wait_for(lambda: bool(said.extend(ledger_lines(capfd.readouterr().err)) or said), timeout=10)
        time.sleep(0.5)  # and says so once, not once per row
        said.extend(ledger_lines(capfd.readouterr().err))
        assert len(said) == 1 and "read-only" in said[0], said
    finally:
        pg.sql(f"ALTER DATABASE {database} SET default_transaction_read_only = off")
    assert wait_for(lambda: pg.sql("SELECT COUNT(*) FROM usage", database=database) == [(4,)])


def test_an_unreachable_server_does_not_stall_calls(pg: PostgresServer, live: StubServer, tmp_path: Path) -> None:
    ipyllm.config.update(usage_db=f"postgresql://nobody@127.0.0.1:{free_port()}/nothing", daily_budget_usd=1.0, prices=PRICED)
    try:
        started = time.perf_counter()
        for index in range(20):
            ipyllm.complete(f"nobody listens {index} says hello to the stub, at length", max_tokens=10)
        assert time.perf_counter() - started < 15
        assert len(_api.session.ledger.rows()) == 20
    finally:
        for store in _api.session.records._stores.values():
            if store is not None:
                store.close()


def test_without_psycopg_calls_go_on_and_say_what_to_install(
    pg: PostgresServer, live: StubServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    url = pg.url(pg.new_database())
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed: importing it fails
    ipyllm.config.update(usage_db=url, daily_budget_usd=1.0, prices=PRICED)
    try:
        for index in range(3):
            ipyllm.complete(f"no driver {index} says hello to the stub, at length", max_tokens=10)
        lines = ledger_lines(capfd.readouterr().err)
        assert len(lines) == 2 and "psycopg is not installed: pip install 'ipyllm[postgres]'" in lines[0], lines
        assert len(_api.session.ledger.rows()) == 3
    finally:
        for store in _api.session.records._stores.values():
            if store is not None:
                store.close()


def test_the_password_may_come_from_pgpassword(pg: PostgresServer, live: StubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    database = pg.new_database()
    monkeypatch.setenv("PGPASSWORD", pg.password)
    ipyllm.config.update(usage_db=pg.url(database, password=None), prices=PRICED)
    ipyllm.complete("libpq finds the password says hello to the stub, at length", max_tokens=10)
    store = _api.session.store()
    assert store is not None and store.flush()  # type: ignore[attr-defined]
    assert rows_in(pg, database) == 1
    store.close()


def test_the_password_never_shows(pg: PostgresServer, ip: Any, capfd: pytest.CaptureFixture[str]) -> None:
    database = pg.new_database()
    url = pg.url(database)
    ip.run_line_magic("llm_config", f"usage_db={url}")
    ipyllm.config.update(prices=PRICED)
    ip.run_cell("%llm --no-stream hello", store_history=True)
    shown = ip.run_line_magic("llm_config", "--show")
    usage = ip.run_line_magic("llm_usage", "--all --by user")
    frame = ipyllm.usage(all_sessions=True)
    store = _api.session.store()
    assert store is not None
    outputs = capfd.readouterr()
    texts = [str(shown), repr(ipyllm.config), repr(ipyllm.config.usage_db), str(ipyllm.config.usage_db), f"{ipyllm.config.usage_db}",
             str(usage), frame.to_csv(), store.name, repr(store), outputs.out, outputs.err]  # fmt: skip
    assert all(pg.password not in text for text in texts)
    assert f"postgresql://postgres:****@127.0.0.1:{pg.port}/{database}" in outputs.out + str(shown)
    assert store.flush()  # type: ignore[attr-defined]
    rows = pg.sql("SELECT * FROM usage", database=database)
    assert len(rows) == 1 and pg.password not in repr(rows)
    store.close()


def test_llm_usage_all_by_user_and_host_reads_the_server(team: str, ip: Any) -> None:
    store = open_store(parse_location(team))
    assert store is not None
    store.append(UsageRow(session="theirs", model="gpt-4o-mini", cost_usd=0.25, user="carol", host="laptop-7"))
    assert store.flush()  # type: ignore[attr-defined]
    ipyllm.config.update(user="ada")
    ip.run_cell("%llm --no-stream hello", store_history=True)
    by_user = ip.run_line_magic("llm_usage", "--all --by user")
    by_host = ip.run_line_magic("llm_usage", "--all --by host")
    text = str(by_user) + str(getattr(by_user, "data", ""))
    assert "carol" in text and "ada" in text
    assert "laptop-7" in str(by_host) + str(getattr(by_host, "data", ""))
    frame = ipyllm.usage(all_sessions=True)
    assert list(frame.columns) == list(COLUMNS) and {str(d) for d in frame.dtypes} == {str(d) for d in COLUMNS.values()}
    assert sorted(frame["user"]) == ["ada", "carol"]
    store.close()


def test_the_picker_shows_the_teams_and_the_users_spend_today(team: str) -> None:
    store = open_store(parse_location(team))
    assert store is not None
    store.append(UsageRow(session="theirs", model="gpt-4o-mini", cost_usd=0.25, user="carol"))
    assert store.flush()  # type: ignore[attr-defined]
    ipyllm.config.update(user="ada")
    ipyllm.complete("from ada says hello to the stub, at length", max_tokens=10)
    picker = ipyllm.picker()
    try:
        assert "today: team $0.26, ada $0.010" in picker.spend.value
        ipyllm.complete("again says hello to the stub, at length", max_tokens=10)
        assert "today: team $0.27, ada $0.020" in picker.spend.value
    finally:
        picker.close()
        store.close()


def test_holds_on_the_server_count_for_every_kernel_until_settled(pg: PostgresServer) -> None:
    from datetime import timedelta

    url = parse_location(pg.url(pg.new_database()))
    first, second = open_store(url), open_store(url)
    assert first is not None and second is not None
    now = datetime.now(timezone.utc)
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)

    def hold(name: str, amount: float, pid: int = os.getpid(), host: str = "here") -> Hold:
        return Hold(name, amount, "s", "ada", host, pid, now, now + timedelta(seconds=60))

    limits = [Limit("daily_budget_usd", 1.0, midnight)]
    assert isinstance(first.reserve(hold("a", 0.6), limits), Hold)
    refusal = second.reserve(hold("b", 0.6), limits)
    # Nothing spent yet; 0.6 held by a call in flight of the other kernel.
    assert isinstance(refusal, Headroom) and (refusal.spent, refusal.held, refusal.holds) == (0.0, pytest.approx(0.6), 1)
    first.append(UsageRow(model="m", cost_usd=0.1, user="ada"), release="a")  # settled: the row replaces the hold
    assert first.flush()  # type: ignore[attr-defined]
    taken = second.reserve(hold("b", 0.6), limits)
    assert isinstance(taken, Hold) and taken.amount == 0.6
    # A hold of a process on this host that has died frees its budget.
    assert isinstance(second.reserve(hold("dead", 0.3, pid=2**22 + 12345), limits), Hold)
    assert isinstance(first.reserve(hold("c", 0.3, host="here"), limits), Hold)
    # A sizer takes what a limit leaves: 2.0 - 0.1 spent - (0.6 + 0.3) held.
    sized = first.reserve(hold("d", 0.0), [Limit("daily_budget_usd", 2.0, midnight)], size=lambda rooms: rooms[0].left)
    assert isinstance(sized, Hold) and sized.amount == pytest.approx(1.0)
    first.close()
    second.close()


def quarter_hour_deadlock(pg: PostgresServer, database: str, boundary: int, ours: Callable[[], Any]) -> None:
    """Make ``ours`` (which writes one row just after the quarter hour ``boundary``) deadlock with another kernel's
    batch, one transaction of two rows on either side of it. Two transactions that add rows on either side of a
    quarter hour lock the same totals in opposite orders (the quarter hour's, then the day's): PostgreSQL ends the
    deadlock by rolling ours back (it waited first). The other batch is committed."""
    import psycopg

    other = psycopg.connect(pg.url(database))
    insert = 'INSERT INTO usage (uid, timestamp_us, session, model, "user", host, status) VALUES (%s, %s, %s, %s, %s, %s, %s)'
    try:
        other.execute(insert, ["other-1", boundary - 1, "other", "m", "ada", "h", "ok"])  # its quarter hour, the day
        thread = threading.Thread(target=ours)
        thread.start()
        # Ours locks the next quarter hour and waits for the day; the other then wants that quarter hour.
        waiting = f"SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{database}' AND wait_event_type = 'Lock'"
        assert wait_for(lambda: pg.sql(waiting) == [(1,)], timeout=10)
        other.execute(insert, ["other-2", boundary + 2, "other", "m", "ada", "h", "ok"])
        other.commit()
    finally:
        other.close()
    thread.join(15)
    assert not thread.is_alive()
    assert wait_for(lambda: pg.sql(f"SELECT deadlocks FROM pg_stat_database WHERE datname = '{database}'")[0][0] >= 1, timeout=10)


def after_quarter_hour() -> tuple[int, datetime]:
    """The latest quarter-hour boundary (microseconds) and a time just after it."""
    from ipyllm._totals import QUARTER_US

    boundary = (int(time.time() * 1e6) // QUARTER_US) * QUARTER_US
    return boundary, datetime.fromtimestamp((boundary + 1) / 1e6, timezone.utc)


@pytest.mark.parametrize("spool", ["kept", "unwritable"])
def test_a_deadlock_with_another_kernels_writes_is_written_again_without_a_word(
    pg: PostgresServer, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, spool: str
) -> None:
    """The writer's batch (or, while the spool cannot be written, the row sent straight to the server) rolled back to
    end a deadlock is written again; that is no outage, so nothing is said and budgets keep reading the server."""
    database = pg.new_database()
    store = open_store(parse_location(pg.url(database)))
    assert store is not None
    try:
        store.append(UsageRow(session="first", model="m", user="ada", host="h"))  # migrates the database
        assert store.flush()  # type: ignore[attr-defined]

        def disk_full(*_: Any) -> None:
            raise OSError("disk full")

        said = []
        if spool == "unwritable":  # the row goes straight to the server, on the caller's thread
            monkeypatch.setattr(store.spool, "put", disk_full)  # type: ignore[attr-defined]
            said = [f"ipyllm: cannot write the spool {store.spool.path} (disk full): rows go straight to the server or stay in memory"]  # type: ignore[attr-defined]
        boundary, just_after = after_quarter_hour()

        def ours() -> None:
            store.append(UsageRow(timestamp=just_after, session="ours", model="m", user="ada", host="h"))

        quarter_hour_deadlock(pg, database, boundary, ours)
        assert store.flush(timeout=15)  # type: ignore[attr-defined]
        assert pg.sql("SELECT session, COUNT(*) FROM usage GROUP BY session ORDER BY session", database=database) == [
            ("first", 1),
            ("other", 2),
            ("ours", 1),
        ]
        assert ledger_lines(capfd.readouterr().err) == said
        assert not store.link.away  # type: ignore[attr-defined]
    finally:
        store.close()


def test_a_deadlock_while_a_new_kernel_writes_what_an_earlier_one_left_is_no_outage(
    pg: PostgresServer, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A new kernel's first connection writes the rows an earlier kernel left in the spool; rolled back there to end
    a deadlock, that batch is written again at once, and the read that connected answers, without a word."""
    from ipyllm._postgres import PostgresStore

    database = pg.new_database()
    server = parse_location(pg.url(database))
    assert isinstance(server, Server)
    spool = tmp_path / "spool.sqlite3"
    boundary, just_after = after_quarter_hour()
    earlier = PostgresStore(server, spool=spool)
    try:
        earlier.count()  # migrates the database
        monkeypatch.setattr(earlier.writer, "wake", lambda: None)  # killed before its writer wrote the row
        earlier.append(UsageRow(timestamp=just_after, session="left", model="m", user="ada", host="h"))
    finally:
        earlier.link.close()
        earlier.writer.stop()
    assert len(Spool(spool)) == 1

    later = PostgresStore(server, spool=spool)
    try:
        counted: list[int] = []
        quarter_hour_deadlock(pg, database, boundary, lambda: counted.append(later.count()))
        assert later.flush(timeout=15)
        assert pg.sql("SELECT session, COUNT(*) FROM usage GROUP BY session ORDER BY session", database=database) == [
            ("left", 1),
            ("other", 2),
        ]
        assert counted == [3]  # read once the rows it found waiting were written, after the other kernel's
        assert ledger_lines(capfd.readouterr().err) == []
        assert not later.link.away
    finally:
        later.close()


def test_a_frame_of_100000_rows_reads_quickly(pg: PostgresServer) -> None:
    database = pg.new_database()
    store = open_store(parse_location(pg.url(database)))
    assert store is not None
    store.count()  # migrates
    pg.sql(
        "INSERT INTO usage (uid, timestamp_us, session, cell, source, kind, model, provider, prompt_tokens, completion_tokens,"
        ' total_tokens, cached_tokens, tokens_estimated, cost_usd, latency_s, attempts, status, "user", host)'
        " SELECT 'u' || i, 1700000000000000 + i, 's' || (i %% 50), i %% 300, 'api', 'chat', 'gpt-4o-mini', 'openai', 100, 20, 120,"
        " NULL, false, 0.0001, 0.5, 1, 'ok', 'ada', 'here' FROM generate_series(1, 100000) AS i",
        database=database,
    )
    started = time.perf_counter()
    frame = store.frame()
    elapsed = time.perf_counter() - started
    assert len(frame) == 100_000 and frame["cost_usd"].sum() == pytest.approx(10.0)
    assert elapsed < 3.0  # 1 s on an idle machine (benchmarks/bench.py); margin for a loaded one
    store.close()


def test_import_ipyllm_and_load_ext_do_not_import_psycopg(tmp_path: Path) -> None:
    code = (
        "import sys, ipyllm; from IPython.core.interactiveshell import InteractiveShell; "
        "InteractiveShell.instance().run_line_magic('load_ext', 'ipyllm'); print('psycopg' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLM_USAGE_DB": ":memory:"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.stdout.strip() == "False"


def test_a_provider_batch_on_the_team_ledger_is_attached_to_and_taken_once(team: str, pg: PostgresServer, live: StubServer) -> None:
    ipyllm.config.update(batch_poll_min_wait=0.01, batch_poll_max_wait=0.05, prices={})
    live.script_batches(BatchScript(hold=True))
    texts = [f"team row {i}" for i in range(6)]
    handle = ipyllm.map("Say {value}", texts, via="batch", wait=False)
    other = ipyllm.Session(config=ipyllm.LLMConfig(), usage_db=team, base_url=live.base_url, api_key="sk-other-0000000000")
    other.config.update(batch_poll_min_wait=0.01, batch_poll_max_wait=0.05)
    attached = other.map("Say {value}", texts, via="batch", wait=False)
    assert attached.ids == handle.ids and len(live.requests_to("/v1/batches")) == 1
    live.release_batches()
    assert attached.result(progress=False).notna().all()
    assert handle.result(progress=False).tolist() == [f"[gpt-4o-mini] Say {text}" for text in texts]
    database = team.rsplit("/", 1)[1]
    assert pg.sql("SELECT status FROM batches", database=database) == [("collected",)]
    assert pg.sql("SELECT COUNT(*) FROM usage WHERE tier = 'batch'", database=database) == [(6,)]
    assert list(other.batches()["status"]) == ["collected"]
    other.close()


def test_a_map_is_claimed_by_one_kernel_on_the_team_ledger(pg: PostgresServer) -> None:
    database = pg.new_database()
    url = parse_location(pg.url(database))
    first, second = open_store(url), open_store(url)
    assert first is not None and second is not None
    mine = Claim("map-key", "s1", "ada", "here", rows=6)
    assert first.batch_claim(mine) is None
    assert second.batch_claim(Claim("map-key", "s2", "bob", "here")) == mine  # the other kernel waits for it
    first.batch_unclaim(mine)
    theirs = Claim("map-key", "s2", "bob", "here")
    assert second.batch_claim(theirs) is None
    # A claim of a process on this host that has died is taken over.
    assert first.batch_claim(Claim("dead-map", "s3", host="here", pid=2**22 + 12345)) is None
    taker = Claim("dead-map", "s4", host="here")
    assert second.batch_claim(taker) is None and first.batch_claim(Claim("dead-map", "s5", host="here")) == taker
    assert pg.sql("SELECT map_key, session FROM batch_claims ORDER BY map_key", database=database) == [
        ("dead-map", "s4"),
        ("map-key", "s2"),
    ]
    first.close()
    second.close()
