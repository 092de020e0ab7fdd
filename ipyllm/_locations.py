"""Where the usage ledger is: a SQLite file, a team's PostgreSQL server, or memory.

The ``usage_db`` setting is parsed once, by ``parse_location``, into one of three values, and no code passes
the setting through ``str``, ``Path`` or ``os.path`` after that:

- ``SQLiteFile(path)``: the file, its path made absolute when parsed; ``str()`` and ``os.fspath()`` are the path.
- ``Server(host, port, database, user, password, options)``: a PostgreSQL database. The password lives only
  inside, as a ``Secret``: ``str()`` and ``repr()`` show ``postgresql://ada:****@db:5432/team``, and only
  ``url()`` (for the connection) reveals it. A server is no path: ``Path(server)`` raises ``TypeError``.
- ``Memory()``: ``:memory:``, this session's rows in memory only.

A value that looks like a URL and does not parse as a server is refused (``LocationError``, one line naming
the accepted forms, the password masked), so that a typo never becomes a file in the working directory with
the password in its name: a one-slash ``postgresql:/ada:pw@db:5432/team``, a misspelt or unknown scheme, a port
that is not a number. ``postgres://`` and ``postgresql+psycopg://`` name the same server as ``postgresql://``.
Unset, ``usage_db`` means ``default_usage_db()``: ``ipyllm/usage.sqlite`` in the Jupyter data directory.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsIndex
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ipyllm._secrets import Secret

__all__ = [
    "ACCEPTED",
    "LOCATIONS",
    "Location",
    "LocationError",
    "Memory",
    "SQLiteFile",
    "Server",
    "default_usage_db",
    "masked_text",
    "parse_location",
]

#: The forms ``usage_db`` accepts, as a refusal names them.
ACCEPTED = "a file path, :memory:, or a postgresql://user[:password]@host[:port]/dbname URL (postgres:// and postgresql+psycopg:// too)"

#: URL schemes that name a PostgreSQL server (lower case).
SERVER_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

# A scheme of two characters or more: "C:" is a Windows drive, not a scheme.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")
# Where a URL typo's user name starts: a scheme-like word with slashes, or a PostgreSQL scheme and its colon.
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:?/+|postgres[A-Za-z0-9+.\-]*:", re.IGNORECASE)
# A server URL with its colon missing ("postgresql//ada@db/team"): a typo, not a directory to create.
_SCHEME_WITHOUT_COLON = re.compile(r"postgres[A-Za-z0-9+.\-]*/", re.IGNORECASE)


class LocationError(ValueError):
    """``usage_db`` names no ledger: one line naming the accepted forms; ``shown`` is the value, its password masked."""

    def __init__(self, text: str) -> None:
        self.shown = masked_text(text)
        super().__init__(f"usage_db must be {ACCEPTED} (got {self.shown!r})")


def masked_text(text: str) -> str:
    """``text`` with what stands where a URL's password would (after the user name's ``:``, up to the last ``@``,
    and a ``password=`` option) replaced by ``****``; for a value that is no URL too, so a typo shows no password."""
    text = re.sub(r"(?i)(password=)[^&#]*", r"\1****", text)
    head, at, tail = text.rpartition("@")
    if not at:
        return text
    prefix = _PREFIX.match(head)
    start = prefix.end() if prefix else 0
    user, colon, _ = head[start:].partition(":")
    return f"{head[:start]}{user}:****@{tail}" if colon else text


@dataclass(frozen=True, init=False)
class SQLiteFile:
    """A SQLite ledger file; its path is made absolute (and ``~`` expanded) when made, so a later change of
    directory does not move it. ``str()`` and ``os.fspath()`` give the path."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(os.path.abspath(os.path.expanduser(os.fspath(path)))))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SQLiteFile({str(self.path)!r})"


@dataclass(frozen=True)
class Memory:
    """``:memory:``: this session's rows stay in memory, nothing is written."""

    def __str__(self) -> str:
        return ":memory:"

    def __repr__(self) -> str:
        return "Memory()"


class _Password(Secret):
    """A server's password: its text is ``****`` only (a key's shows its last four characters)."""

    @staticmethod
    def _masked_text(plain: str) -> str:
        return "****"


@dataclass(frozen=True, repr=False)
class Server:
    """A PostgreSQL database, a team's ledger. The password is a ``Secret``: ``str()`` and ``repr()`` show
    ``postgresql://user:****@host:port/dbname``; ``url()`` reveals it, for the connection only.

    Equal servers name the same database with the same password (another password is another store: the old
    one may have been refused); equality and hashing agree. ``host`` "" and ``port`` None are libpq's defaults.
    """

    host: str = ""
    port: int | None = None
    database: str = ""
    user: str | None = None
    password: Secret | None = None
    #: Connection options from the URL's query (``sslmode=require``), in order.
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.password is not None and not isinstance(self.password, _Password):
            object.__setattr__(self, "password", _Password(self.password))

    def _text(self, password: str | None) -> str:
        userinfo = ""
        if self.user is not None or password is not None:
            userinfo = quote(self.user or "", safe="") + ("" if password is None else f":{password}") + "@"
        host = quote(self.host, safe="") if self.host.startswith("/") else f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        query = f"?{urlencode(self.options)}" if self.options else ""
        return f"postgresql://{userinfo}{host}{port}/{quote(self.database, safe='')}{query}"

    def url(self) -> RevealedURL:
        """The URL with its password, for ``psycopg.connect`` (its ``repr`` is masked, for the frames that hold it)."""
        password = None if self.password is None else quote(str.__str__(self.password.reveal()), safe="")
        return RevealedURL(self._text(password))

    def revealed_password(self) -> str | None:
        """The password in plain text (to scrub it from a driver's message), or None."""
        return None if self.password is None else str.__str__(self.password.reveal())

    def __str__(self) -> str:
        return self._text(None if self.password is None else "****")

    def __repr__(self) -> str:
        return f"Server({str(self)!r})"

    def __copy__(self) -> Server:
        return self

    def __deepcopy__(self, memo: object) -> Server:
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        raise TypeError("a ledger server cannot be pickled (a pickle would hold its password in plain text)")


class RevealedURL(str):
    """A server's URL with its password, as the connection gets it; its ``repr`` is masked."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(masked_text(str.__str__(self)))


#: Where the ledger is.
Location = SQLiteFile | Server | Memory
LOCATIONS = (SQLiteFile, Server, Memory)


def parse_location(value: str) -> Location:
    """The ledger ``value`` names; raises ``LocationError`` (one line, the password masked) for a value that looks
    like a URL but names no server, so that it never becomes a file."""
    text = value.strip()
    if text == ":memory:":
        return Memory()
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme.group(1).lower() in SERVER_SCHEMES and text[scheme.end() :].startswith("//"):
            return _server(text)
        raise LocationError(text)  # one slash, a misspelt or another scheme, "usage:1.sqlite": never a file
    if not text or text.startswith(":") or (_SCHEME_WITHOUT_COLON.match(text) and ("@" in text or "//" in text)):
        raise LocationError(text)
    return SQLiteFile(text)


def _server(text: str) -> Server:
    if any(c.isspace() for c in text) or "#" in text:
        raise LocationError(text)
    parts = urlsplit(text)
    try:
        port = parts.port  # raises on a port that is not a number (or out of range)
    except ValueError:
        raise LocationError(text) from None
    host = unquote(parts.hostname or "")
    database = unquote(parts.path[1:])
    if not (host or database) or "," in host or "/" in parts.path[1:]:
        raise LocationError(text)  # no place; several hosts; a path that is no database name
    options = parse_qsl(parts.query, keep_blank_values=True)
    password = None if parts.password is None else unquote(parts.password)
    if any(name == "password" for name, _ in options):  # libpq takes it there too: kept inside all the same
        password = password if password is not None else next(value for name, value in options if name == "password")
        options = [(name, value) for name, value in options if name != "password"]
    user = unquote(parts.username) if parts.username else None
    return Server(host, port, database, user, None if password is None else _Password(password), tuple(options))


def default_usage_db() -> SQLiteFile:
    """``ipyllm/usage.sqlite`` under the user's Jupyter data directory: the ledger while ``usage_db`` is unset."""
    try:
        from jupyter_core.paths import jupyter_data_dir

        base = Path(jupyter_data_dir())
    except ImportError:  # jupyter_core's own rules, for a plain IPython without Jupyter
        if os.environ.get("JUPYTER_DATA_DIR"):
            base = Path(os.environ["JUPYTER_DATA_DIR"])
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Jupyter"
        elif os.name == "nt":
            base = Path(os.environ.get("APPDATA", Path.home())) / "jupyter"
        else:
            base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "jupyter"
    return SQLiteFile(base / "ipyllm" / "usage.sqlite")
