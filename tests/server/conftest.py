"""A real Jupyter Server with ipyllm's extension enabled (pytest-jupyter's ``jp_serverapp`` / ``jp_fetch``), reading a
real ledger: a SQLite file, or a database on the real PostgreSQL server of ``tests/postgres/pg.py``.

The server reads its settings from the environment at start, as a real one does: ``server_environ`` sets the
``LLM_*`` variables (a key, a user, a daily budget, the ledger) before ``jp_serverapp`` starts it. Rows come from
a real ipyllm session calling the stub server (``write_calls``), or in bulk (``write_rows``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# pytest-jupyter's fixtures and its async-test hooks, for this folder only (its jp_server_cleanup is autouse).
from pytest_jupyter.jupyter_server import *  # noqa: F403

import ipyllm
from ipyllm import _api
from ipyllm._ledger import open_store
from ipyllm._locations import parse_location
from ipyllm._usage import UsageRow
from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import free_port
from ..postgres.pg import PostgresServer

#: $0.001 per output token and max_tokens=10: every call to the stub costs exactly $0.01.
PRICED = {"gpt-4o-mini": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.001}}

#: Whom the server and the writing session name.
USER = "ada"

#: The server's daily budget: four $0.01 calls are 80 % of it.
DAILY_BUDGET = 0.05


@dataclass
class Ledger:
    """The ledger a test's server reads: its ``usage_db`` text, its kind, and the secrets that must never show."""

    kind: str
    location: str
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    """Each ledger kind in turn: a SQLite file, or a fresh database on the PostgreSQL server (with a password).

    ``memory`` and ``unreachable`` (asked for by a test): ``:memory:``, and a PostgreSQL URL with the server's password
    and a port nothing listens on.
    """
    if request.param in ("sqlite", "memory"):
        return Ledger(request.param, str(tmp_path / "ledger.sqlite") if request.param == "sqlite" else ":memory:", [SECRET])
    server: PostgresServer = request.getfixturevalue("pg")
    if request.param == "unreachable":
        return Ledger("postgresql", f"postgresql://postgres:{server.password}@127.0.0.1:{free_port()}/nowhere", [SECRET, server.password])
    return Ledger("postgresql", server.url(server.new_database()), [SECRET, server.password])


@pytest.fixture
def server_options() -> dict[str, Any]:
    """More of the server's configuration, by section (a test overrides it: ``{"IPyLLM": {"show_prompts": True}}``)."""
    return {}


@pytest.fixture
def server_environ(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The ``LLM_*`` variables the server reads at start: the ledger, a key, a user, a daily budget."""
    monkeypatch.setenv("LLM_USAGE_DB", ledger.location)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_USER", USER)
    monkeypatch.setenv("LLM_DAILY_BUDGET_USD", str(DAILY_BUDGET))
    return ledger


@pytest.fixture
def jp_server_config(server_environ: Ledger, server_options: dict[str, Any]) -> dict[str, Any]:
    """The extension enabled as ``jupyter-config/server-config/ipyllm.json`` enables it, plus ``server_options``."""
    return {"ServerApp": {"jpserver_extensions": {"ipyllm": True}}, **server_options}


@pytest.fixture
def writer(live: StubServer, server_environ: Ledger) -> Iterator[Any]:
    """The test's own ipyllm session, calling the stub server and writing to the server's ledger as ``ada``."""
    ipyllm.config.update(usage_db=server_environ.location, user=USER, prices=PRICED)
    live.reply_tokens = 20  # every reply is cut at max_tokens=10: $0.01 a call
    yield ipyllm
    for store in _api.session.records._stores.values():
        if store is not None:
            store.close()


def write_calls(count: int, prompt: str = "hello") -> None:
    """``count`` real calls through the session (each $0.01, one row each), their rows in the ledger on return."""
    for number in range(count):
        ipyllm.complete(f"{prompt} {number}", max_tokens=10)
    flush()


def flush() -> None:
    """Wait for the session's rows to reach the ledger (a team ledger's writer thread moves them from its spool)."""
    for store in _api.session.records._stores.values():
        if store is not None and hasattr(store, "flush"):
            assert store.flush(), "the session's rows did not reach the team ledger within 5 s"


def write_rows(location: str, rows: list[UsageRow]) -> None:
    """Rows straight into the ledger, as many kernels would have written them."""
    store = open_store(parse_location(location))
    assert store is not None
    try:
        store.append_many(rows)
    finally:
        store.close()
