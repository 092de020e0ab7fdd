"""The team ledger's link to its server: connections, and whether the server is away.

A call never waits for a server known to be away: the foreground connects on first use, and again only once the
writer thread (``ipyllm._pgwriter``) has found the server back. One line says when the server is lost (whatever
fails first, however often) and one when it is back; the password is scrubbed from what the driver says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ipyllm._locations import Server
from ipyllm._notices import notice
from ipyllm._pgschema import migrate
from ipyllm._spool import Spool

if TYPE_CHECKING:
    import psycopg

__all__ = ["ServerLink", "driver_errors"]


#: PostgreSQL's "transaction rollback" errors that another transaction's writes cause: a deadlock (the trigger of
#: two kernels' batches can lock the same rows of totals in opposite orders, e.g. across a quarter hour) and a
#: serialization failure. The server is there: the same writes succeed when made again.
_ROLLED_BACK = frozenset({"40001", "40P01"})


def rolled_back(error: BaseException) -> bool:
    """Whether PostgreSQL rolled the transaction back to settle a conflict with another one (write it again)."""
    return getattr(error, "sqlstate", None) in _ROLLED_BACK


def driver_errors() -> tuple[type[BaseException], ...]:
    """psycopg's errors (none when it is not installed: then no connection is ever made)."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


class ServerLink:
    """The server, the foreground's connection to it (budgets, reads, the cache) and the outage state.

    Callers hold ``lock`` while they use ``usable()``'s connection. ``wake`` and ``drain`` are the writer's
    (``SpoolWriter`` sets them): a lost server is tried again in the background, and a new connection first
    writes the rows an earlier kernel left in the spool.
    """

    def __init__(self, server: Server, spool: Spool, connect_timeout: int = 2) -> None:
        self.server = server
        self.name = str(server)  # the password masked
        self.spool = spool
        self.connect_timeout = connect_timeout
        self.lock = threading.RLock()
        self.connection: psycopg.Connection[Any] | None = None
        self.away = False
        #: Outages so far: what is said once per outage compares it with the one it was said in.
        self.outages = 0
        self.reason = ""
        self.closed = False
        self._tried = False
        self.wake: Callable[[], None] = lambda: None
        self.drain: Callable[[psycopg.Connection[Any]], int] = lambda connection: 0

    def open(self) -> psycopg.Connection[Any]:
        """A new connection, migrated; raises on any failure (the caller decides what it means)."""
        import psycopg

        connection = psycopg.connect(self.server.url(), connect_timeout=self.connect_timeout, autocommit=True, application_name="ipyllm")
        try:
            migrate(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def usable(self) -> psycopg.Connection[Any] | None:
        """The foreground connection (caller holds the lock), or None while the server is away.

        Connects on first use, and again once the writer has found the server back.
        """
        if self.connection is not None or self.closed:
            return self.connection
        if self._tried and self.away:
            return None
        self._tried = True
        connection: psycopg.Connection[Any] | None = None
        try:
            connection = self.open()
            if len(self.spool):
                # Rows left by an earlier kernel (perhaps killed while the server was away) go first.
                self.drain(connection)
        except Exception as error:
            self.lost(error, connection)
            return None
        self.connection = connection
        return connection

    def reason_of(self, error: BaseException) -> str:
        """What went wrong, on one line, the password scrubbed."""
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0] if lines else type(error).__name__
        if isinstance(error, ImportError):
            reason = "psycopg is not installed: pip install 'ipyllm[postgres]'"
        password = self.server.revealed_password()
        for shown in (password, quote(password, safe="")) if password else ():
            reason = reason.replace(shown, "****")
        return reason

    def lost(self, error: BaseException, connection: psycopg.Connection[Any] | None = None) -> None:
        """The server cannot be used: say so (once per outage), and let the writer find it again."""
        with self.lock:
            for broken in (connection, self.connection):
                if broken is not None:
                    try:
                        broken.close()
                    except Exception:
                        pass
            self.connection = None
            if not self.away:  # one line per outage, whatever fails first and however often
                self.away = True
                self.outages += 1
                self.reason = self.reason_of(error)
                notice(
                    f"cannot use the team ledger {self.name} ({self.reason}): rows wait in {self.spool.path} "
                    "and are written when it is back; budgets count this kernel's calls and the last spend read"
                )
        self.wake()

    def found(self, written: int) -> None:
        """A new connection of the writer's wrote what waited: if the server was away, it is back (said once)."""
        with self.lock:
            back, self.away = self.away, False
        if back:
            notice(f"the team ledger {self.name} is back: {written} waiting row{'s' if written != 1 else ''} written")

    def close(self) -> None:
        """Disconnect the foreground (caller holds the lock); nothing connects again."""
        self.closed = True
        if self.connection is not None:
            self.connection.close()
            self.connection = None
