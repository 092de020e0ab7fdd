"""The Jupyter Server extension: read-only JSON about the usage ledger, for JupyterLab's status bar and panel.

Kernels write usage rows; the browser cannot read a SQLite file or a PostgreSQL server, so the Jupyter server
reads the same ledger for it and answers three GETs (the JSON is fixed by ``docs/jupyterlab.md``):

- ``/ipyllm/api/summary``: today's spend of this user (and the team's on a shared ledger), the budgets, ``level``;
- ``/ipyllm/api/usage?by=model|day|hour|notebook|user&since=ISO|today|month&until=ISO``: grouped figures;
- ``/ipyllm/api/calls?limit=50``: the latest rows, prompts only when ``c.IPyLLM.show_prompts = True``.

The server reads the settings a kernel reads: ``LLM_*`` variables (and ``c.LLMConfig`` in the server's own
configuration), so it finds the same ledger, user and budgets. The queries are ``ipyllm._views``'s GROUP BY
reads; they run on one thread of their own, so a slow server never holds the event loop, and that thread is
the only one using the store (opened once, kept for the server's life). Every endpoint is behind Jupyter's
authentication (``tornado.web.authenticated`` + ``jupyter_server.auth.authorized`` on the resource
``ipyllm``). Nothing here imports litellm, and no answer carries a key or a password: the ledger is named
only by its kind, and error messages are scrubbed of both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from tornado.ioloop import IOLoop
from traitlets import Bool, Int

from ipyllm import _views
from ipyllm._budget import local_midnight, user_name
from ipyllm._config import LLMConfig
from ipyllm._ledger import open_store
from ipyllm._locations import Memory, Server, SQLiteFile, default_usage_db
from ipyllm._sqlite import SQLiteStore
from ipyllm._store import Store
from ipyllm.errors import LedgerUnavailableError

__all__ = ["BY", "BadParameterError", "IPyLLM", "LedgerReader", "parse_time", "usage_window"]

T = TypeVar("T")

#: The groupings ``/usage`` offers (``_views.grouped`` knows more; these are the ones the panel shows).
BY = ("model", "day", "hour", "notebook", "user")

#: What Jupyter's authorizer is asked about: ``read`` on this resource.
RESOURCE = "ipyllm"

# "+01:00" arrives as " 01:00" when a URL was typed without encoding its "+".
_SPACED_OFFSET = re.compile(r" (\d\d(?::?\d\d)?)$")


class IPyLLM(ExtensionApp):
    """The server extension: its settings (``c.IPyLLM.…`` in ``jupyter_server_config.py``), its handlers, the reader."""

    name = "ipyllm"
    description = "ipyllm's read-only usage endpoints under /ipyllm/api/"
    load_other_extensions = True

    show_prompts = Bool(
        False,
        help="Let /ipyllm/api/calls return each call's prompt (the 'source' field). Off: anyone with the server's "
        "token sees spend and models, never what was asked.",
    ).tag(config=True)
    max_calls = Int(1000, help="The largest limit /ipyllm/api/calls accepts.").tag(config=True)

    reader: LedgerReader | None = None

    def initialize_settings(self) -> None:
        """Read the settings a kernel reads (``LLM_*``, and ``c.LLMConfig`` in the server's configuration)."""
        settings = LLMConfig(environ=os.environ, config=self.serverapp.config if self.serverapp else None)
        self.reader = LedgerReader(settings, self)
        self.settings["ipyllm_reader"] = self.reader
        self.log.info("ipyllm: usage endpoints under /ipyllm/api/, reading the %s ledger %s", self.reader.kind, self.reader.location)

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [("/ipyllm/api/summary", SummaryHandler), ("/ipyllm/api/usage", UsageHandler), ("/ipyllm/api/calls", CallsHandler)]
        )

    async def stop_extension(self) -> None:
        if self.reader is not None:
            await IOLoop.current().run_in_executor(None, self.reader.close)


class BadParameterError(ValueError):
    """A query parameter the endpoint cannot use: HTTP 400, the message one line saying what to send."""


def parse_time(name: str, value: str, now: datetime) -> datetime:
    """An ISO 8601 time (naive: the server's local time), or ``today`` / ``month`` (local midnight, first of the month)."""
    text = value.strip()
    if text == "today":
        return local_midnight()
    if text == "month":
        return local_midnight().replace(day=1)
    text = _SPACED_OFFSET.sub(r"+\1", text)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameterError(
            f"{name} must be an ISO 8601 time such as {now.replace(microsecond=0).isoformat()}, or today or month (got {value!r})"
        ) from None
    return moment.astimezone() if moment.tzinfo is None else moment


def usage_window(since: str | None, until: str | None, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until`` as aware datetimes (None where not given); refused if ``since`` is after ``until``."""
    now = now or datetime.now().astimezone()
    start = None if since is None else parse_time("since", since, now)
    end = None if until is None else parse_time("until", until, now)
    if start is not None and end is not None and start > end:
        raise BadParameterError(f"since ({start.isoformat()}) is after until ({end.isoformat()}): swap them")
    return start, end


def ledger_kind(location: object) -> str:
    return "memory" if isinstance(location, Memory) else "postgresql" if isinstance(location, Server) else "sqlite"


class LedgerReader:
    """The ledger the kernels write, read on one thread of its own; the store opened once, on first use."""

    def __init__(self, settings: LLMConfig, server_settings: IPyLLM) -> None:
        self.settings = settings.snapshot()
        self.server_settings = server_settings
        self.location = self.settings.usage_db if self.settings.usage_db is not None else default_usage_db()
        self.kind = ledger_kind(self.location)
        self.user = user_name(self.settings)
        self.budgets: dict[str, float | None] = {
            "daily_budget_usd": self.settings.daily_budget_usd,
            "user_daily_budget_usd": self.settings.user_daily_budget_usd,
            "budget_usd": self.settings.budget_usd,
        }
        self._secrets = [s for s in self._plain_secrets() if s]
        self._store: Store | None = None
        self._opened = False
        self._empty = _views.memory_reader([])
        # One thread: the store is only ever used from it, and requests queue instead of opening connections.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipyllm-ledger")

    def _plain_secrets(self) -> list[str]:
        found = []
        if isinstance(self.location, Server):
            found.append(self.location.revealed_password() or "")
        key = self.settings.api_key
        if key is not None:
            found.append(str.__str__(key.reveal()))
        found.extend(os.environ.get(name, "") for name in ("LLM_API_KEY", "PGPASSWORD"))
        return found

    def scrub(self, text: str) -> str:
        """``text`` without any key or password the server knows of (a driver's message may quote a URL)."""
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    def store(self) -> _views.Reader:
        """The open store; an empty reader for ``:memory:`` (the kernels' rows are theirs) and while no kernel has made
        the SQLite file (a reader creates none)."""
        if isinstance(self._store, SQLiteStore) and self._moved(self._store):
            self._forget(self._store)
        if not self._opened:
            if isinstance(self.location, SQLiteFile) and not os.path.exists(self.location.path):
                return self._empty
            self._store = open_store(self.location)
            self._opened = True
        return self._empty if self._store is None else self._store

    @staticmethod
    def _moved(store: SQLiteStore) -> bool:
        """Whether the file the store has open is no longer the one at the ledger's path (deleted, or replaced)."""
        return store.file.connection is not None and not store.file.at_path()

    def _forget(self, store: SQLiteStore) -> None:
        """Let go of a ledger file someone deleted or replaced, without writing it back.

        A kernel's store recreates a vanished ledger with all it held (its rows must not be lost); the server only
        reads, and is always running: it would bring back a ledger the user deleted to start afresh. So it lets go
        of the file, and opens whatever file is at the path when one is there.
        """
        store.file.let_go()
        self._store, self._opened = None, False

    async def run(self, action: Callable[[_views.Reader], T]) -> T:
        return await IOLoop.current().run_in_executor(self._executor, lambda: action(self.store()))

    # -- the three answers (run on the ledger's thread) ------------------------------------------------------
    def summary(self, store: _views.Reader) -> dict[str, Any]:
        return {**_views.summary(store, user=self.user, budgets=self.budgets), "ledger": self.kind}

    def usage(self, store: _views.Reader, by: str, since: datetime | None, until: datetime | None) -> dict[str, Any]:
        rows = _views.grouped(store, by, since=since, until=until)
        return {"by": by, "since": iso(since), "until": iso(until), "rows": rows}

    def calls(self, store: _views.Reader, limit: int) -> dict[str, Any]:
        return {"calls": _views.latest(store, limit=limit, prompts=self.server_settings.show_prompts)}

    def close(self) -> None:
        def close_store() -> None:
            if self._store is not None:
                self._store.close()

        self._executor.submit(close_store).result(timeout=10)
        self._executor.shutdown(wait=True)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class LedgerHandler(APIHandler):
    """An authenticated, read-only JSON endpoint over the ledger."""

    auth_resource = RESOURCE

    @property
    def reader(self) -> LedgerReader:
        reader: LedgerReader = self.settings["ipyllm_reader"]
        return reader

    def refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish({"message": message})

    def parameters(self, allowed: tuple[str, ...]) -> dict[str, str]:
        """The query's parameters, each at most once and each one this endpoint takes."""
        found: dict[str, str] = {}
        for name, values in self.request.query_arguments.items():
            if name == "token":  # Jupyter's own: the token may come in the URL instead of a header
                continue
            if name.isdigit() and values == [b""]:  # JupyterLab's cache buster: a bare `?1733312345678` on a GET
                continue
            if name not in allowed:
                takes = ", ".join(allowed) if allowed else "no parameters"
                raise BadParameterError(f"unknown parameter {name!r}: {self.request.path} takes {takes}")
            if len(values) > 1:
                raise BadParameterError(f"give {name} once (got it {len(values)} times)")
            found[name] = self.decode_argument(values[0], name=name)
        return found

    def compute(self) -> Callable[[_views.Reader], Mapping[str, Any]]:
        """The request's parameters checked (``BadParameterError``: a 400), and what to read from the ledger."""
        raise NotImplementedError

    @web.authenticated
    @authorized(resource=RESOURCE)
    async def get(self) -> None:
        """Parse (400 on a bad parameter), read the ledger on its thread (503 while it cannot be read), reply."""
        try:
            action = self.compute()
        except BadParameterError as error:
            self.refuse(400, str(error))
            return
        try:
            result = await self.reader.run(action)
        except LedgerUnavailableError as error:  # the ledger's own line names its place: kept for the server's log
            self.log.warning("ipyllm: %s", self.reader.scrub(str(error)))
            self.refuse(
                503, f"the {self.reader.kind} ledger cannot be read now: see the Jupyter server's log (it is tried again at each request)"
            )
            return
        except Exception as error:  # a bug or a driver's surprise: one line, scrubbed, and the details in the server log
            self.log.error("ipyllm: reading the ledger failed: %s", self.reader.scrub(repr(error)))
            self.refuse(500, f"ipyllm could not read the {self.reader.kind} ledger ({type(error).__name__}): see the Jupyter server's log")
            return
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(dict(result))


class SummaryHandler(LedgerHandler):
    def compute(self) -> Callable[[_views.Reader], Mapping[str, Any]]:
        self.parameters(())
        return self.reader.summary


class UsageHandler(LedgerHandler):
    def compute(self) -> Callable[[_views.Reader], Mapping[str, Any]]:
        given = self.parameters(("by", "since", "until"))
        by = given.get("by", "model")
        if by not in BY:
            raise BadParameterError(f"by must be one of {', '.join(BY)} (got {by!r})")
        since, until = usage_window(given.get("since"), given.get("until"))
        return lambda store: self.reader.usage(store, by, since, until)


class CallsHandler(LedgerHandler):
    def compute(self) -> Callable[[_views.Reader], Mapping[str, Any]]:
        given = self.parameters(("limit",))
        most = self.reader.server_settings.max_calls
        text = given.get("limit", "50")
        if not re.fullmatch(r"\s*\d+\s*", text) or not 1 <= int(text) <= most:
            raise BadParameterError(f"limit must be a whole number from 1 to {most} (got {text!r})")
        limit = int(text)
        return lambda store: self.reader.calls(store, limit)
