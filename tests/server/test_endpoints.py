"""ipyllm's Jupyter Server extension against a real Jupyter Server (pytest-jupyter's ``jp_fetch``), on a SQLite
ledger and on a real PostgreSQL one: each endpoint's JSON after real calls through an ipyllm session to the stub
server, the summary's level, the groupings, refusals without the token, 400s for bad parameters, and no key or
password in any answer."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

import ipyllm
from ipyllm._usage import UsageRow
from ipyllm.testing import Fault, StubServer

from .conftest import DAILY_BUDGET, USER, Ledger, flush, write_calls, write_rows

ENDPOINTS = ("summary", "usage", "calls")

#: For what does not depend on the ledger's kind (parameters, settings): the SQLite file only.
SQLITE_ONLY = pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)


async def get(jp_fetch: Any, endpoint: str, **params: str) -> Any:
    """The endpoint's JSON (failing the test on any status but 200)."""
    response: HTTPResponse = await jp_fetch("ipyllm", "api", endpoint, params=params)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


def assert_no_secret(body: bytes, ledger: Ledger) -> None:
    text = body.decode()
    for secret in ledger.secrets:
        assert secret not in text, "a key or a password in an answer"
    if ledger.kind == "postgresql":
        assert ledger.location.rsplit("@", 1)[1] not in text, "the ledger's URL, even masked, is not shown"


async def test_summary_counts_real_calls_and_their_budget(jp_fetch: Any, writer: Any, live: StubServer, ledger: Ledger) -> None:
    empty = await get(jp_fetch, "summary")
    assert empty["today"] == {"cost_usd": 0, "calls": 0, "errors": 0, "refused": 0}
    assert empty["last_row"] is None
    write_calls(2)
    live.script(Fault.status(400, "no such thing"))
    with pytest.raises(ipyllm.LLMError):
        ipyllm.complete("fails", max_tokens=10)
    flush()

    summary = await get(jp_fetch, "summary")
    assert (summary["user"], summary["ledger"]) == (USER, ledger.kind)
    assert summary["team"] is (ledger.kind == "postgresql")
    assert summary["today"]["calls"] == 3 and summary["today"]["errors"] == 1 and summary["today"]["refused"] == 0
    assert summary["today"]["cost_usd"] == pytest.approx(0.02)
    if ledger.kind == "postgresql":
        assert summary["team_today"]["calls"] == 3 and summary["team_today"]["cost_usd"] == pytest.approx(0.02)
    else:
        assert summary["team_today"] is None
    daily = next(budget for budget in summary["budgets"] if budget["name"] == "daily_budget_usd")
    assert daily["limit_usd"] == DAILY_BUDGET and daily["spent_usd"] == pytest.approx(0.02) and daily["left_usd"] == pytest.approx(0.03)
    assert summary["level"] == "ok"
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    assert datetime.fromisoformat(summary["day_start"]) == midnight
    last = datetime.fromisoformat(summary["last_row"])
    assert last.tzinfo is not None and abs(datetime.now(timezone.utc) - last) < timedelta(minutes=1)

    write_calls(1)
    assert (await get(jp_fetch, "summary"))["version"] != summary["version"], "a new row changes the version"


async def test_level_turns_warn_at_80_percent_and_over_once_a_budget_refuses(jp_fetch: Any, writer: Any, ledger: Ledger) -> None:
    write_calls(3)  # $0.03 of $0.05
    assert (await get(jp_fetch, "summary"))["level"] == "ok"
    write_calls(1)  # $0.04: 80 %
    assert (await get(jp_fetch, "summary"))["level"] == "warn"
    ipyllm.config.budget_usd = 0.04  # the session's own budget refuses the next call: an over_budget row
    with pytest.raises(ipyllm.BudgetExceededError):
        ipyllm.complete("one more", max_tokens=10)
    flush()
    summary = await get(jp_fetch, "summary")
    assert summary["today"]["refused"] == 1
    assert summary["today"]["cost_usd"] == pytest.approx(0.04), "still under the daily budget: over because a call was refused"
    assert summary["level"] == "over"


def bulk(now: datetime) -> list[UsageRow]:
    """Rows of two users, two models and two notebooks, today and 40 days ago."""
    rows = []
    for number in range(12):
        rows.append(
            UsageRow(
                timestamp=now - timedelta(seconds=number),
                session=f"s{number % 3}",
                model="gpt-4o-mini" if number % 2 else "gpt-4o",
                prompt_tokens=10,
                completion_tokens=5,
                total_tokens=15,
                cost_usd=0.001,
                latency_s=0.5,
                status="error" if number == 0 else "ok",
                user="ada" if number < 8 else "bob",
                notebook=None if number == 11 else f"nb{number % 2}.ipynb",
                source=f"secret prompt {number}",
            )
        )
    old = now - timedelta(days=40)
    rows.append(
        UsageRow(timestamp=old, session="old", model="claude-3-haiku", prompt_tokens=1, completion_tokens=1, cost_usd=1.0, user="ada")
    )
    return rows


async def test_usage_groups_by_model_user_day_and_hour_within_the_window(jp_fetch: Any, server_environ: Ledger) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    write_rows(server_environ.location, bulk(now))

    by_model = await get(jp_fetch, "usage", by="model")
    assert (by_model["by"], by_model["since"], by_model["until"]) == ("model", None, None)
    rows = {row["key"]: row for row in by_model["rows"]}
    assert set(rows) == {"gpt-4o", "gpt-4o-mini", "claude-3-haiku"}
    assert rows["gpt-4o"]["calls"] == 6 and rows["gpt-4o"]["errors"] == 1
    assert rows["gpt-4o"]["input_tokens"] == 60 and rows["gpt-4o"]["output_tokens"] == 30
    assert rows["gpt-4o"]["cost_usd"] == pytest.approx(0.006) and rows["gpt-4o"]["mean_latency_s"] == pytest.approx(0.5)

    this_month = await get(jp_fetch, "usage", by="model", since="month")
    assert "claude-3-haiku" not in {row["key"] for row in this_month["rows"]}
    assert datetime.fromisoformat(this_month["since"]).day == 1

    by_user = {row["key"]: row["calls"] for row in (await get(jp_fetch, "usage", by="user", since="today"))["rows"]}
    assert by_user == {"ada": 8, "bob": 4} or now.astimezone().date() != datetime.now().astimezone().date()

    since = (now - timedelta(days=41)).isoformat()
    until = (now - timedelta(days=39)).isoformat()
    window = await get(jp_fetch, "usage", by="model", since=since, until=until)
    assert [row["key"] for row in window["rows"]] == ["claude-3-haiku"]
    assert datetime.fromisoformat(window["since"]) == now - timedelta(days=41)

    days = (await get(jp_fetch, "usage", by="day"))["rows"]
    assert sorted(row["calls"] for row in days) == [1, 12]
    hours = (await get(jp_fetch, "usage", by="hour", since=(now - timedelta(hours=2)).isoformat()))["rows"]
    assert sum(row["calls"] for row in hours) == 12
    notebooks = {row["key"]: row["calls"] for row in (await get(jp_fetch, "usage", by="notebook"))["rows"]}
    assert notebooks == {"nb0.ipynb": 6, "nb1.ipynb": 5, None: 2}


async def test_calls_are_newest_first_without_prompts(jp_fetch: Any, server_environ: Ledger) -> None:
    now = datetime.now(timezone.utc)
    write_rows(server_environ.location, bulk(now))
    calls = (await get(jp_fetch, "calls", limit="5"))["calls"]
    assert len(calls) == 5
    stamps = [datetime.fromisoformat(call["timestamp"]) for call in calls]
    assert stamps == sorted(stamps, reverse=True) and abs(stamps[0] - now) < timedelta(seconds=1)
    first = calls[0]
    assert {"timestamp", "model", "kind", "status", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "attempts",
            "notebook", "user", "session", "error"} <= set(first)  # fmt: skip
    assert (first["model"], first["status"], first["user"], first["notebook"]) == ("gpt-4o", "error", "ada", "nb0.ipynb")
    assert "source" not in first
    every = (await get(jp_fetch, "calls"))["calls"]
    assert len(every) == 13
    assert all("secret prompt" not in json.dumps(call) for call in every)


@pytest.mark.parametrize("server_options", [{"IPyLLM": {"show_prompts": True}}])
@SQLITE_ONLY
async def test_calls_show_prompts_when_the_server_allows_it(jp_fetch: Any, server_environ: Ledger) -> None:
    write_rows(server_environ.location, bulk(datetime.now(timezone.utc)))
    calls = (await get(jp_fetch, "calls", limit="1"))["calls"]
    assert calls[0]["source"] == "secret prompt 0"


@SQLITE_ONLY
@pytest.mark.parametrize("server_options", [{"LLMConfig": {"daily_budget_usd": 2.5, "user": "cy"}, "IPyLLM": {"max_calls": 3}}])
async def test_the_server_configuration_overrides_the_environment(jp_fetch: Any, server_environ: Ledger) -> None:
    summary = await get(jp_fetch, "summary")
    assert summary["user"] == "cy"
    assert next(budget for budget in summary["budgets"] if budget["name"] == "daily_budget_usd")["limit_usd"] == 2.5
    assert len((await get(jp_fetch, "calls", limit="3"))["calls"]) == 0
    response = await jp_fetch("ipyllm", "api", "calls", params={"limit": "4"}, raise_error=False)
    assert response.code == 400 and "from 1 to 3" in json.loads(response.body)["message"]


@pytest.mark.parametrize("ledger", ["memory"], indirect=True)
async def test_a_memory_ledger_answers_empty(jp_fetch: Any, ledger: Ledger) -> None:
    summary = await get(jp_fetch, "summary")
    assert summary["ledger"] == "memory" and summary["today"]["calls"] == 0 and summary["last_row"] is None
    assert (await get(jp_fetch, "usage", by="model"))["rows"] == []
    assert (await get(jp_fetch, "calls"))["calls"] == []


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("endpoint", "params", "says"),
    [
        ("usage", {"by": "colour"}, "by must be one of model, day, hour, notebook, user"),
        ("usage", {"since": "yesterday"}, "since must be an ISO 8601 time"),
        ("usage", {"until": "2026-13-01"}, "until must be an ISO 8601 time"),
        ("usage", {"since": "2026-12-05T00:00:00+00:00", "until": "2026-12-04T00:00:00+00:00"}, "is after until"),
        ("usage", {"by": "model", "per": "day"}, "unknown parameter 'per'"),
        ("calls", {"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ("calls", {"limit": "ten"}, "limit must be a whole number"),
        ("calls", {"limit": "1001"}, "limit must be a whole number from 1 to 1000"),
        ("summary", {"user": "bob"}, "unknown parameter 'user'"),
    ],
)
async def test_bad_parameters_are_a_400_with_one_line(
    jp_fetch: Any, server_environ: Ledger, endpoint: str, params: dict[str, str], says: str
) -> None:
    response = await jp_fetch("ipyllm", "api", endpoint, params=params, raise_error=False)
    assert response.code == 400
    message = json.loads(response.body)["message"]
    assert says in message and "\n" not in message


@SQLITE_ONLY
async def test_a_parameter_given_twice_is_a_400(
    http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str], server_environ: Ledger
) -> None:
    url = f"{jp_base_url}ipyllm/api/usage?by=model&by=day"
    response = await http_server_client.fetch(url, headers=jp_auth_header, raise_error=False)
    assert response.code == 400
    assert json.loads(response.body)["message"] == "give by once (got it 2 times)"


@SQLITE_ONLY
async def test_jupyterlabs_cache_buster_is_taken_as_no_parameter(
    http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str], server_environ: Ledger
) -> None:
    """JupyterLab's requests may end in a bare ``?<milliseconds>``; a named parameter with a number is still refused."""
    ok = await http_server_client.fetch(f"{jp_base_url}ipyllm/api/usage?by=model&1733312345678", headers=jp_auth_header, raise_error=False)
    assert ok.code == 200 and json.loads(ok.body)["by"] == "model"
    bad = await http_server_client.fetch(f"{jp_base_url}ipyllm/api/summary?1733312345678=1", headers=jp_auth_header, raise_error=False)
    assert bad.code == 400 and "unknown parameter '1733312345678'" in json.loads(bad.body)["message"]


async def test_every_endpoint_is_refused_without_the_token(
    jp_fetch: Any, http_server_client: Any, jp_base_url: str, writer: Any, ledger: Ledger
) -> None:
    write_calls(1)
    for endpoint in ENDPOINTS:
        assert (await jp_fetch("ipyllm", "api", endpoint)).code == 200
        for headers in ({}, {"Authorization": "token not-the-token"}):
            # A raw request to the running server: no token, or a wrong one.
            response = await http_server_client.fetch(f"{jp_base_url}ipyllm/api/{endpoint}", headers=headers, raise_error=False)
            assert response.code == 403, (endpoint, headers)
            assert b"gpt-4o-mini" not in response.body and b"cost_usd" not in response.body


async def test_no_key_or_password_in_any_answer(jp_fetch: Any, writer: Any, live: StubServer, ledger: Ledger) -> None:
    write_calls(2)
    live.script(Fault("echo_key", code=401))  # the provider's error repeats the key: the row's error must not
    with pytest.raises(ipyllm.LLMError):
        ipyllm.complete("wrong key", max_tokens=10)
    flush()
    answers = [await jp_fetch("ipyllm", "api", endpoint, raise_error=False) for endpoint in ENDPOINTS]
    answers += [await jp_fetch("ipyllm", "api", "usage", params={"by": by}, raise_error=False) for by in ("user", "notebook", "day")]
    answers += [await jp_fetch("ipyllm", "api", "usage", params={"by": "nope"}, raise_error=False)]
    assert [answer.code for answer in answers] == [200] * 6 + [400]
    for answer in answers:
        assert_no_secret(answer.body, ledger)
    assert json.loads(answers[2].body)["calls"][0]["status"] == "error"


@pytest.mark.parametrize("ledger", ["unreachable"], indirect=True)
async def test_a_ledger_that_cannot_be_reached_is_a_503_without_the_password(jp_fetch: Any, ledger: Ledger) -> None:
    for endpoint in ENDPOINTS:
        response = await jp_fetch("ipyllm", "api", endpoint, raise_error=False)
        assert response.code == 503, response.body
        message = json.loads(response.body)["message"]
        assert message and "\n" not in message
        assert_no_secret(response.body, ledger)


@SQLITE_ONLY
async def test_a_deleted_ledger_file_stays_deleted(jp_fetch: Any, server_environ: Ledger) -> None:
    """The server keeps the file open; deleting it (to start afresh) must not make the server write it back."""
    ledger = Path(server_environ.location)
    write_rows(server_environ.location, bulk(datetime.now(timezone.utc)))
    assert (await get(jp_fetch, "summary"))["today"]["calls"] >= 1
    for path in ledger.parent.glob(ledger.name + "*"):
        path.unlink()
    summary = await get(jp_fetch, "summary")
    assert summary["today"]["calls"] == 0 and summary["last_row"] is None
    assert not ledger.exists(), "the server wrote a deleted ledger back"
    write_rows(server_environ.location, bulk(datetime.now(timezone.utc))[:2])  # a kernel starts a new one
    assert (await get(jp_fetch, "summary"))["today"]["calls"] == 2
