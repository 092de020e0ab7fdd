"""Typed ledger locations (issue 18): ``usage_db`` parses once into a ``SQLiteFile``, a ``Server`` or ``Memory``.

A value that looks like a URL and does not parse is refused in one line naming the accepted forms, and nothing is
created: a URL typo never becomes a file in the working directory with the password in its path. A server's
password is in no path, message, repr or row. The default ledger follows ``JUPYTER_DATA_DIR``.
"""

from __future__ import annotations

import copy
import os
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _api
from ipyllm._config import LLMConfig
from ipyllm._locations import LocationError, Memory, Server, SQLiteFile, default_usage_db, parse_location
from ipyllm._secrets import Secret
from ipyllm.errors import SettingError
from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import free_port

#: A password that shows nowhere; long enough that a mask showing its last four characters would be caught.
PASSWORD = "Pw-3xq9Zt7Lm2Vb8Kd"

TYPOS = {
    "one slash": f"postgresql:/ada:{PASSWORD}@db:5432/team",
    "no slash": f"postgresql:ada:{PASSWORD}@db:5432/team",
    "no colon": f"postgresql//ada:{PASSWORD}@db:5432/team",
    "misspelt scheme": f"postgressql://ada:{PASSWORD}@db:5432/team",
    "short scheme": f"postgre://ada:{PASSWORD}@db:5432/team",
    "another scheme": f"mysql://ada:{PASSWORD}@db:3306/team",
    "sqlite URL": "sqlite:///team.sqlite",
    "port not a number": f"postgresql://ada:{PASSWORD}@db:54x2/team",
    "port out of range": f"postgresql://ada:{PASSWORD}@db:99999/team",
    "a space": f"postgresql://ada:{PASSWORD}@db:5432/team two",
    "no host nor database": f"postgresql://ada:{PASSWORD}@",
    "several hosts": f"postgresql://ada:{PASSWORD}@db1:5432,db2:5432/team",
    "a fragment": f"postgresql://ada:{PASSWORD}@db:5432/team#x",
    "password as an option": f"postgresql:/ada@db:5432/team?password={PASSWORD}",
    "memory misspelt": ":memory",
}


def everything_under(directory: Path) -> list[str]:
    return [str(path.relative_to(directory)) for path in directory.rglob("*")]


def shown_settings(output: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in output.splitlines() if line.strip())  # type: ignore[misc]


def shows_the_accepted_forms(message: str) -> bool:
    return all(form in message for form in ("a file path", ":memory:", "postgresql://user[:password]@host[:port]/dbname"))


# -- typos are refused, and nothing is created ----------------------------------------------------------------


@pytest.mark.parametrize("typo", TYPOS.values(), ids=TYPOS.keys())
def test_a_typo_is_refused_in_one_line_and_nothing_is_created(typo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = LLMConfig(usage_db=":memory:")
    with pytest.raises(SettingError) as refused:
        config.usage_db = typo
    message = str(refused.value)
    assert type(refused.value) is SettingError and "\n" not in message
    assert message.startswith("usage_db must be ") and message.endswith("; the old value stays.")
    assert shows_the_accepted_forms(message), message
    assert PASSWORD not in message and PASSWORD not in repr(refused.value)
    assert config.usage_db == Memory(), "the old value stays"
    with pytest.raises(LocationError) as direct:
        parse_location(typo)
    assert "\n" not in str(direct.value) and PASSWORD not in str(direct.value) + direct.value.shown
    assert everything_under(tmp_path) == []


@pytest.mark.parametrize("typo", [TYPOS["one slash"], TYPOS["misspelt scheme"], TYPOS["port not a number"]])
def test_a_typo_in_the_environment_is_said_once_and_the_default_ledger_is_used(
    typo: str, live: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = LLMConfig(environ={"LLM_USAGE_DB": typo})
    said = capfd.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("ipyllm: ignoring LLM_USAGE_DB: usage_db must be ") and PASSWORD not in said[0]
    assert config.usage_db is None
    session = ipyllm.Session(base_url=live.base_url, api_key=SECRET, usage_db=config.usage_db)
    try:
        session.complete("where do my rows go?")
        store = session.records.store()
        assert store is not None and store.name == str(default_usage_db())
    finally:
        session.close()
    assert everything_under(work) == [], "nothing in the working directory"
    assert not any(PASSWORD in name for name in everything_under(tmp_path))


def test_session_settings_refuse_a_typo_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingError, match=r"^usage_db must be ") as refused:
        ipyllm.Session(usage_db=TYPOS["one slash"])
    assert PASSWORD not in str(refused.value)
    with pytest.raises(SettingError, match=r"^usage_db must be "):
        ipyllm.config.update(model="gpt-4o", usage_db=TYPOS["another scheme"])
    assert ipyllm.config.model == "gpt-4o-mini", "all or nothing"
    assert everything_under(tmp_path) == []


# -- one server, three schemes --------------------------------------------------------------------------------


def test_postgres_and_postgresql_psycopg_name_the_same_server_as_postgresql() -> None:
    servers = [parse_location(f"{scheme}://ada:{PASSWORD}@db:5432/team") for scheme in ("postgresql", "postgres", "postgresql+psycopg")]
    servers.append(parse_location(f"  POSTGRESQL://ada:{PASSWORD}@DB:5432/team  "))
    assert all(isinstance(server, Server) for server in servers)
    assert len(set(servers)) == 1 and all(server == servers[0] for server in servers)
    assert {hash(server) for server in servers} == {hash(servers[0])}
    assert {str(server) for server in servers} == {"postgresql://ada:****@db:5432/team"}
    server = servers[0]
    assert isinstance(server, Server)
    assert (server.host, server.port, server.database, server.user) == ("db", 5432, "team", "ada")
    assert server.url() == f"postgresql://ada:{PASSWORD}@db:5432/team", "the scheme libpq knows, whichever was typed"


def test_a_server_is_not_equal_with_another_password_nor_to_its_text() -> None:
    server = parse_location(f"postgresql://ada:{PASSWORD}@db:5432/team")
    other = parse_location("postgresql://ada:another@db:5432/team")
    assert server != other and server == parse_location(f"postgres://ada:{PASSWORD}@db:5432/team")
    assert server != str(server) and str(server) != server and server != server.url()  # type: ignore[comparison-overlap]
    assert str(server) == str(other), "shown alike: the password is masked"


# -- what str, repr and Path give -----------------------------------------------------------------------------


def test_a_file_location_is_its_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    location = parse_location("ledgers/team.sqlite")
    assert isinstance(location, SQLiteFile)
    real = tmp_path / "ledgers" / "team.sqlite"
    assert Path(location) == location.path == real and str(location) == os.fspath(location) == str(real)
    assert repr(location) == f"SQLiteFile({str(real)!r})"
    monkeypatch.chdir("/")
    assert Path(location) == real, "made absolute when parsed: a later change of directory does not move it"
    real.parent.mkdir()
    with sqlite3.connect(location) as connection:  # os.fspath: the real file
        connection.execute("CREATE TABLE t (x)")
    assert real.exists()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_location("~/usage.sqlite") == SQLiteFile(tmp_path / "usage.sqlite")
    assert parse_location(r"C:\ledgers\usage.sqlite") == SQLiteFile(r"C:\ledgers\usage.sqlite"), "a drive is no scheme"


def test_a_server_shows_its_password_masked_and_is_no_path() -> None:
    server = parse_location(f"postgresql://ada:{PASSWORD}@db.internal:5432/llm_usage?sslmode=require")
    assert isinstance(server, Server)
    assert str(server) == f"{server}" == "postgresql://ada:****@db.internal:5432/llm_usage?sslmode=require"
    assert repr(server) == "Server('postgresql://ada:****@db.internal:5432/llm_usage?sslmode=require')"
    shown = [str(server), repr(server), repr(server.url()), repr(server.password), str(server.password), repr([server]), repr(vars(server))]
    assert not any(PASSWORD in text or PASSWORD[-4:] in text for text in shown), shown
    assert server.url() == f"postgresql://ada:{PASSWORD}@db.internal:5432/llm_usage?sslmode=require"
    with pytest.raises(TypeError):
        Path(server)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        os.fspath(server)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(server)
    assert copy.deepcopy(server) is server and copy.copy(server) is server


def test_a_password_anywhere_in_the_url_stays_inside() -> None:
    encoded = parse_location("postgresql://ada:p%40ss%2Fw0rd@db/team")
    as_option = parse_location("postgresql://ada@db/team?sslmode=require&password=p%40ss%2Fw0rd")
    assert isinstance(encoded, Server) and isinstance(as_option, Server)
    assert encoded.revealed_password() == as_option.revealed_password() == "p@ss/w0rd"
    assert encoded.url() == "postgresql://ada:p%40ss%2Fw0rd@db/team"
    assert str(as_option) == "postgresql://ada:****@db/team?sslmode=require"
    assert "w0rd" not in str(encoded) + repr(encoded) + str(as_option) + repr(as_option)
    assert parse_location("postgresql:///team") == Server(database="team"), "a local socket and libpq's defaults"
    assert str(parse_location("postgresql://db/team")) == "postgresql://db/team", "no user, no password: nothing masked"


def test_the_setting_takes_strings_paths_and_locations_and_shows_them(ip: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = ipyllm.config
    config.usage_db = str(tmp_path / "a.sqlite")
    assert config.usage_db == SQLiteFile(tmp_path / "a.sqlite")
    config.usage_db = tmp_path / "b.sqlite"
    assert config.usage_db == SQLiteFile(tmp_path / "b.sqlite")
    config.usage_db = ":memory:"
    assert config.usage_db == Memory() and str(config.usage_db) == ":memory:"
    config.usage_db = None
    assert config.usage_db is None
    ip.run_line_magic("llm_config", "--show")
    assert shown_settings(capfd.readouterr().out)["usage_db"] == f"unset: {default_usage_db()}"
    ip.run_line_magic("llm_config", f"usage_db=postgres://ada:{PASSWORD}@db:5432/team")
    assert config.usage_db == Server("db", 5432, "team", "ada", Secret(PASSWORD))
    ip.run_line_magic("llm_config", "--show")
    shown = capfd.readouterr().out
    assert shown_settings(shown)["usage_db"] == "postgresql://ada:****@db:5432/team"
    assert PASSWORD not in shown + repr(config) + repr(config.settings()) + repr(config.snapshot())
    config.usage_db = None  # no server to close: it was never used


def test_the_password_is_in_no_path_message_or_row(
    live: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A server that cannot be reached: calls go on, one line says so, rows wait in the spool; the password shows nowhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ipyllm.config.usage_db = f"postgresql://ada:{PASSWORD}@127.0.0.1:{free_port()}/team"
    ipyllm.complete("the server is away")
    store = _api.session.store()
    assert store is not None and not store.flush(10)  # type: ignore[attr-defined]  # the writer found the server away
    said = capfd.readouterr().err
    assert "cannot use the team ledger postgresql://ada:****@127.0.0.1:" in said
    frame = ipyllm.usage()
    assert len(frame) == 1 and PASSWORD not in frame.to_csv() + said
    for store in list(_api.session.records._stores.values()):
        if store is not None:
            store.close()  # the spool stays, for a later kernel to write
    assert everything_under(work) == []
    names = everything_under(tmp_path)
    assert any("spool" in name for name in names) and not any(PASSWORD in name for name in names)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


# -- the default ledger's path, kept while still true -----------------------------------------------------------


def test_the_default_ledger_follows_the_jupyter_data_directory(live: StubServer, tmp_path: Path, monkeypatch: Any) -> None:
    for name in ("one", "two"):
        monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / name))
        ipyllm.complete("hello")
        assert (tmp_path / name / "ipyllm" / "usage.sqlite").exists()
    assert _api.session.store() is not None and _api.session.store().count() == 1
