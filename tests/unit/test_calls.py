"""The response cache (``ipyllm/_calls.py``'s one cached-call path), over real HTTP to the stub server: an identical
request answered from it, any change that alters the answer missing it, another server never answered from it."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api
from ipyllm._locations import default_usage_db
from ipyllm.testing import StubServer


def test_an_identical_request_is_answered_from_the_cache(live: StubServer) -> None:
    ipyllm.config.cache = True
    first = ipyllm.complete("cache me", temperature=0.2)
    pieces: list[str] = []
    second = ipyllm.complete("cache me", temperature=0.2, stream=True, on_text=pieces.append)
    assert second == first and "".join(pieces) == first
    assert len(live.requests) == 1, "the second answer came from the cache"
    row = second.usage
    assert (row.status, row.cost_usd, row.attempts) == ("cached", 0.0, 0)
    assert (row.prompt_tokens, row.completion_tokens) == (first.usage.prompt_tokens, first.usage.completion_tokens)
    with sqlite3.connect(default_usage_db().path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM cache").fetchone()[0] == 1


@pytest.mark.parametrize("change", [{"temperature": 0.3}, {"model": "gpt-4o"}, {"max_tokens": 5}, {"system": "Be brief."}, {"top_p": 0.5}])
def test_a_change_that_alters_the_answer_misses(live: StubServer, change: dict[str, Any]) -> None:
    ipyllm.config.cache = True
    ipyllm.complete("cache me", temperature=0.2)
    reply = ipyllm.complete("cache me", **{"temperature": 0.2, **change})
    assert reply.usage.status == "ok" and len(live.requests) == 2


def test_the_same_request_to_another_server_is_sent_to_it(live: StubServer) -> None:
    ipyllm.config.cache = True
    assert str(ipyllm.complete("same prompt")) == "[gpt-4o-mini] same prompt"
    with StubServer() as other:
        ipyllm.config.base_url = other.base_url
        reply = ipyllm.complete("same prompt")
        assert len(other.requests) == 1, "another endpoint: the cached answer of the first does not apply"
        assert reply.usage.status == "ok"
    ipyllm.config.base_url = live.base_url
    assert ipyllm.complete("same prompt").usage.status == "cached", "the first server's answer is still cached"
    assert len(live.requests) == 1


def test_the_cache_is_off_by_default_and_outlives_the_session(live: StubServer) -> None:
    ipyllm.complete("same")
    ipyllm.complete("same")
    assert len(live.requests) == 2
    ipyllm.config.cache = True
    ipyllm.complete("kept")
    _api.session.__init__(config=ipyllm.config, client=_api.session.client, id=_api.SESSION_ID)  # a new kernel on the same ledger file
    assert ipyllm.complete("kept").usage.status == "cached"
    assert len(live.requests) == 3


def test_embeddings_are_cached(live: StubServer) -> None:
    ipyllm.config.cache = True
    first = ipyllm.embed(["x y", "z"])
    second = ipyllm.embed(["x y", "z"])
    assert second == first and second.usage.status == "cached" and len(live.requests) == 1


def test_the_cache_in_memory_mode(live: StubServer) -> None:
    ipyllm.config.update(cache=True, usage_db=":memory:")
    ipyllm.complete("in memory")
    assert ipyllm.complete("in memory").usage.status == "cached" and len(live.requests) == 1
    assert not default_usage_db().path.exists()


def test_no_cache_on_the_magic_sends_anyway(ip: Any, live: StubServer) -> None:
    ipyllm.config.cache = True
    with capture_output() as captured:
        ip.run_cell("%llm cached prompt")
        ip.run_cell("%llm cached prompt")
        ip.run_cell("%llm --no-cache cached prompt")
    assert len(live.requests) == 2
    assert [r.status for r in _api.session.ledger.rows()] == ["ok", "cached", "ok"]
    assert captured.stderr == ""
