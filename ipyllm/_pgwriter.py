"""The team ledger's writer: every row goes to a local spool first, and a thread moves it to the server.

A row is committed to the spool (``ipyllm._spool``) as its call ends, so a call never waits for the server and a
kernel killed meanwhile loses nothing; the writer thread then writes the spool to the server in order, a batch
per transaction, each row once (by its uid). While the server is away it tries again with growing waits (up to
``max_backoff``); a new connection that wrote is the news that the server is back. A kernel that ends writes
what waits, if the server is there (else the next kernel will).
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ipyllm._notices import notice
from ipyllm._pglink import ServerLink, driver_errors, rolled_back
from ipyllm._pgschema import write_entry
from ipyllm._spool import Spool
from ipyllm.errors import LedgerUnavailableError

if TYPE_CHECKING:
    import psycopg

__all__ = ["SpoolWriter"]


class SpoolWriter:
    """Rows and releases into the spool, and the thread that writes them to the server.

    Parameters
    ----------
    link
        The server and its outage state; the writer becomes its ``wake`` and its ``drain``.
    spool
        Where entries wait.
    settled
        Told the holds whose rows are on the server now (called from the writer thread, without the link's lock).
    """

    #: Longest wait, in seconds, between two attempts to reach a server that is away.
    max_backoff = 10.0
    #: How many times in a row a batch is written again after PostgreSQL rolled it back for another kernel's writes
    #: (a deadlock), before that counts as an outage.
    max_rewrites = 5

    def __init__(self, link: ServerLink, spool: Spool, settled: Callable[[Iterable[str | None]], None]) -> None:
        self.link = link
        self.spool = spool
        self.settled = settled
        self._thread: threading.Thread | None = None
        self._pending = threading.Event()
        self._draining = threading.Lock()
        self._said_spool = False
        link.wake, link.drain = self.wake, self.drain
        atexit.register(self._at_exit)

    def keep(self, uid: str, release: str | None, values: list[Any] | None) -> None:
        """Commit one entry to the spool (a killed kernel loses nothing) and wake the writer."""
        try:
            self.spool.put(uid, release, values)
        except Exception as error:  # the spool itself is unusable: straight to the server, else memory only
            if not self._said_spool:
                self._said_spool = True
                notice(f"cannot write the spool {self.spool.path} ({error}): rows go straight to the server or stay in memory")
            self._write_now(uid, release, values)
            return
        self.wake()

    def _write_now(self, uid: str, release: str | None, values: list[Any] | None) -> None:
        link = self.link
        with link.lock:
            connection = link.usable()
            if connection is None:
                return
            try:
                self._again(lambda: write_entry(connection, uid, release, values))
            except driver_errors() as error:
                link.lost(error)
            else:
                self.settled([release])

    def _again(self, write: Callable[[], None]) -> None:
        """Run ``write`` (one transaction), and again at once while PostgreSQL rolls it back to end a deadlock with
        another kernel's writes (not an outage), up to ``max_rewrites`` times."""
        for rewrite in range(self.max_rewrites + 1):
            try:
                write()
                return
            except Exception as error:
                if not rolled_back(error) or rewrite == self.max_rewrites:
                    raise

    def wake(self) -> None:
        """Tell the writer there is something to write (starting it on first use)."""
        self._pending.set()
        with self.link.lock:
            if not self.link.closed and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="ipyllm-ledger-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        """The writer thread: moves spooled rows to the server in order; while it is away, tries again with growing waits."""
        link = self.link
        connection: psycopg.Connection[Any] | None = None
        delay = 0.0
        while not link.closed:
            if delay:
                time.sleep(delay)
            else:
                self._pending.wait()
            if link.closed:
                break
            self._pending.clear()
            if link.away and connection is not None:  # lost in the foreground: prove it back on a new connection
                connection.close()
                connection = None
            fresh = connection is None
            try:
                if connection is None:
                    connection = link.open()
                    # A read-only server (or a standby) takes no rows: wait for a writable one.
                    if connection.execute("SHOW transaction_read_only").fetchone() == ("on",):
                        raise LedgerUnavailableError("the database is read-only")
                written = self.drain(connection)
            except Exception as error:
                link.lost(error, connection)
                connection = None
                delay = min(max(delay * 2, 0.25), self.max_backoff)
                continue
            delay = 0.0
            if fresh:  # only a new connection that wrote is news that the server is back
                link.found(written)
        if connection is not None:
            connection.close()

    def drain(self, connection: psycopg.Connection[Any]) -> int:
        """Write the spool to the server in order, a batch per transaction (written again after a deadlock); rows
        already there are skipped by uid."""
        written = 0
        with self._draining:
            while batch := self.spool.peek():

                def write() -> None:
                    with connection.transaction(), connection.cursor() as cursor:
                        for _seq, uid, release, values in batch:
                            write_entry(cursor, uid, release, values)

                self._again(write)
                written += sum(values is not None for _, _, _, values in batch)
                self.spool.drop(batch[-1][0])
                self.settled(release for _, _, release, _ in batch)
        return written

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the rows of this kernel are on the server (at most ``timeout`` s; not at all while it is away)."""
        deadline = time.monotonic() + timeout
        while len(self.spool) and not self.link.away and time.monotonic() < deadline:
            self.wake()
            time.sleep(0.01)
        return not len(self.spool)

    def stop(self) -> None:
        """Stop the thread (the link is closed) and close the spool."""
        self._pending.set()
        self.spool.close()

    def _at_exit(self) -> None:
        """A kernel or script that ends writes what waits, if the server is there (else the next one will)."""
        link = self.link
        if link.closed or link.away or not len(self.spool):
            return
        try:
            with link.lock:
                connection = link.usable()
            if connection is not None:
                self.drain(connection)
        except Exception:
            pass  # still in the spool: the next kernel writes it
