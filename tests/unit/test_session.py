"""``ipyllm.Session``: sessions of their own, side by side and from threads; ``config.using()`` in one context only;
the one cached-call path shared by ``complete``, ``embed`` and ``map``. Over real HTTP to the stub server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _api
from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import ROOT


def rows_in(ledger: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(ledger) as connection:
        return connection.execute("SELECT session, model, status FROM usage ORDER BY id").fetchall()


# -- sessions of their own -------------------------------------------------------------------------------------


def test_two_sessions_keep_their_models_ledgers_and_rows_apart(live: StubServer, tmp_path: Path) -> None:
    first = ipyllm.Session(base_url=live.base_url, api_key=SECRET, model="gpt-4o", usage_db=str(tmp_path / "first.sqlite"))
    second = ipyllm.Session(base_url=live.base_url, api_key=SECRET, model="gpt-4o-mini", usage_db=str(tmp_path / "second.sqlite"))
    try:
        assert first.complete("hello").startswith("[gpt-4o] ") and second.complete("hello").startswith("[gpt-4o-mini] ")
        assert first.id != second.id != ipyllm.SESSION_ID
        assert rows_in(tmp_path / "first.sqlite") == [(first.id, "gpt-4o", "ok")]
        assert rows_in(tmp_path / "second.sqlite") == [(second.id, "gpt-4o-mini", "ok")]
        assert first.usage()["model"].tolist() == ["gpt-4o"] and second.usage()["model"].tolist() == ["gpt-4o-mini"]
        # The default session (ipyllm.config, ipyllm.usage()) saw none of it.
        assert ipyllm.usage().empty and ipyllm.config.model == "gpt-4o-mini" and ipyllm.config.usage_db is None
    finally:
        first.close()
        second.close()


def test_a_session_refuses_an_unknown_setting() -> None:
    with pytest.raises(ipyllm.UnknownSettingError, match="did you mean budget_usd"):
        ipyllm.Session(budget=1)


def test_two_sessions_called_from_many_threads_write_each_row_once_to_their_own_ledger(live: StubServer, tmp_path: Path) -> None:
    sessions = [
        ipyllm.Session(base_url=live.base_url, api_key=SECRET, model=model, usage_db=str(tmp_path / f"{name}.sqlite"))
        for name, model in (("a", "gpt-4o"), ("b", "gpt-4o-mini"))
    ]
    errors: list[BaseException] = []

    def work(session: ipyllm.Session, index: int) -> None:
        try:
            for call in range(5):
                session.complete(f"thread {index} call {call}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(sessions[i % 2], i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        for session, name, model in ((sessions[0], "a", "gpt-4o"), (sessions[1], "b", "gpt-4o-mini")):
            rows = rows_in(tmp_path / f"{name}.sqlite")
            assert len(rows) == 20 and set(rows) == {(session.id, model, "ok")}
            assert len(session.ledger) == 20
            # Opened once, whichever thread asked first: no second store left open.
            assert len([store for store in session.records._stores.values() if store is not None]) == 1
    finally:
        for session in sessions:
            session.close()


def test_using_changes_the_calls_of_this_context_only(live: StubServer) -> None:
    seen: dict[str, str] = {}
    inside = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        inside.wait(10)
        seen["other"] = str(ipyllm.complete("from the other thread"))
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with ipyllm.config.using(model="gpt-4o"):
        inside.set()
        assert release.wait(20)
        seen["inside"] = str(ipyllm.complete("inside the block"))
        assert ipyllm.config.model == "gpt-4o-mini", "the shared setting is unchanged"
    thread.join(10)
    seen["after"] = str(ipyllm.complete("after the block"))
    assert seen["inside"].startswith("[gpt-4o] ")
    assert seen["other"].startswith("[gpt-4o-mini] ") and seen["after"].startswith("[gpt-4o-mini] ")


def test_using_refuses_a_bad_value_before_the_block(live: StubServer) -> None:
    with pytest.raises(ipyllm.SettingError, match="temperature"), ipyllm.config.using(temperature=5):
        pytest.fail("the block must not run")
    with pytest.raises(ipyllm.UnknownSettingError), ipyllm.config.using(temprature=0.5):
        pytest.fail("the block must not run")


# -- one cached-call path ------------------------------------------------------------------------------------


def test_a_map_run_again_sends_its_rows_again_when_what_is_sent_changes(live: StubServer) -> None:
    items = ["otters", "beavers", "herons"]
    ipyllm.map("say {value}", items, progress=False)
    assert len(live.requests) == 3
    ipyllm.map("say {value}", items, progress=False)
    assert len(live.requests) == 3, "the same map again: every row from the cache"
    ipyllm.map("say {value}", items, progress=False, system="Be brief.")
    assert len(live.requests) == 6, "another system prompt is another request"
    schema = {"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]}
    ipyllm.map("say {value}", items, progress=False, schema=schema)
    assert len(live.requests) == 9, "another schema is another request"
    other = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    ipyllm.map("say {value}", items, progress=False, schema=other)
    assert len(live.requests) == 12, "and so is a third"


def test_a_reply_kept_by_map_answers_complete_from_the_cache_without_litellm(live: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    ipyllm.config.update(usage_db=str(ledger))
    ipyllm.map("say {value}", ["otters"], progress=False)
    code = (
        "import json, sys, ipyllm\n"
        f"ipyllm.config.update(base_url={live.base_url!r}, api_key='sk-other', usage_db={str(ledger)!r}, cache=True)\n"
        "reply = ipyllm.complete('say otters')\n"
        "print(json.dumps({'text': str(reply), 'status': reply.usage.status, 'provider': reply.usage.provider,"
        " 'litellm': 'litellm' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"text": "[gpt-4o-mini] say otters", "status": "cached", "provider": "openai", "litellm": False}
    assert len(live.requests) == 1, "the second process sent nothing"


def test_embeddings_take_the_same_path(live: StubServer) -> None:
    ipyllm.config.cache = True
    first = ipyllm.embed(["a text"])
    again = ipyllm.embed(["a text"])
    assert len(live.requests) == 1 and again == first
    assert (first.usage.status, again.usage.status, again.usage.provider) == ("ok", "cached", "openai")
    _api.session.embed(["a text"], cache=False)
    assert len(live.requests) == 2
