"""The SQLite ledger's file, watched: opened on first use, reopened when it vanished, spooled while it cannot be written.

SQLite goes on writing to a file deleted while it is open, and what it writes vanishes at exit. So before each
use the path's device and inode are compared with the open file's (one ``stat``, a few microseconds). A file
that vanished (deleted, moved or replaced) is recreated at its path, or the file now there is used, and
everything the vanished file still holds, read from it while it is still open (every session's rows, the
cache, the budget holds of calls in flight), is copied in, each row once (by its uid).

A file that cannot be written (its directory gone or replaced, read-only, locked, full) never breaks a call:
one line says so, once per outage; rows and cache entries wait in a local spool (``ipyllm._spool``, as the
team ledger's do) as well as in memory, and are written to the ledger, each row once, when it can be written
again: tried with growing waits (up to 10 s) before a write, at once before the usage frame is read, and at
exit. Meanwhile cache lookups see the spooled answers. A file that is not a ledger (corrupt, or from a newer
ipyllm) is given up for the session: one line says so and the rows stay in memory.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ipyllm._locations import SQLiteFile
from ipyllm._notices import notice
from ipyllm._spool import Spool, SpooledEntry, spool_path, write_ahead
from ipyllm._sqlschema import COPIES, INSERT_ROW, Entry, apply, cached, committed, migrate
from ipyllm._usage import micros, utc_now
from ipyllm.errors import LedgerUnavailableError

__all__ = ["LedgerFile"]

#: Failures that mean the file is not a ledger (this ipyllm's): given up for the session, not tried again.
_NOT_A_LEDGER = ("not a database", "malformed", "newer than this ipyllm")


def _reason(error: BaseException) -> str:
    if isinstance(error, FileExistsError):  # a directory to create is a file
        return f"{error.filename} is not a directory"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _advice(reason: str) -> str:
    if "readonly" in reason or "read-only" in reason or "Permission denied" in reason:
        return "make it writable or set LLM_USAGE_DB to a writable file"
    if "locked" in reason or "busy" in reason:
        return "another program holds it; close it or set LLM_USAGE_DB to another file"
    if "not a database" in reason or "malformed" in reason:
        return "move the broken file away or set LLM_USAGE_DB to another file"
    if "while in use" in reason:
        return "restore its directory or set LLM_USAGE_DB to a file that can be written"
    return "set LLM_USAGE_DB to a file that can be written"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' if count != 1 else ''}"


def _identity_of(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at ``path`` (None when there is none)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


class _UnreadableError(Exception):
    """The file that vanished cannot be read back (its disk is gone)."""


class _Vanished:
    """A ledger file that vanished while open (deleted, moved or replaced): kept open, with the identity it and its
    -wal and -shm files had, until what it holds is in the file now at its path."""

    def __init__(
        self, connection: sqlite3.Connection, identity: tuple[int, int] | None, companions: dict[str, tuple[int, int] | None], how: str
    ) -> None:
        self.connection, self.identity, self.companions, self.how = connection, identity, companions, how

    def clear_companions(self, file: str) -> None:
        """Unlink the -wal and -shm files at the path that belong to the vanished file (deleted without them, or
        replaced by a rename): the file now at the path would read them as its own, and break both. The vanished
        file, still open, keeps using them."""
        if _identity_of(file) == self.identity:
            return
        for suffix, identity in self.companions.items():
            if identity is not None and _identity_of(file + suffix) == identity:
                os.unlink(file + suffix)

    def copy_into(self, connection: sqlite3.Connection, identity: tuple[int, int], path: Path) -> int | None:
        """Copy what the vanished file holds into the file now at the path (whose identity is ``identity``), then close
        it: every session's rows (each once, by uid), cache entries and live holds. Read from the vanished file, which
        is still open, so rows written to it after it vanished are copied too. The rows it held; None when there is
        nothing to copy."""
        copied: int | None = None
        if identity != self.identity:  # else the same file is back (its directory was restored)
            copied = 0
            try:
                with committed(connection):
                    for read, write in COPIES:
                        for chunk in self._read(read):
                            connection.executemany(write, chunk)
                            copied += len(chunk) if write is INSERT_ROW else 0
            except _UnreadableError as error:
                copied = None
                notice(
                    f"the usage ledger {path} was {self.how} while in use and what it held cannot be read back "
                    f"({error}): it starts again at its path; this session's rows are in ipyllm.usage()"
                )
        self.close()
        return copied

    def _read(self, sql: str) -> Iterator[list[Any]]:
        try:
            cursor = self.connection.execute(sql, [micros(utc_now())] if "?" in sql else [])
            while chunk := cursor.fetchmany(1000):
                yield chunk
        except sqlite3.Error as error:
            raise _UnreadableError(_reason(error)) from error

    def close(self) -> None:
        self.connection.close()


def _new_connection(file: str, timeout: float) -> tuple[sqlite3.Connection, tuple[int, int], dict[str, tuple[int, int] | None]]:
    """A connection to the ledger ``file`` (created, with its directory, when missing), migrated; the identity of that
    file and of its -wal and -shm files."""
    os.makedirs(os.path.dirname(file), exist_ok=True)
    connection = sqlite3.connect(file, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        write_ahead(connection, timeout)
        connection.execute("PRAGMA synchronous = NORMAL")
        migrate(connection)
        status = os.stat(file)
    except BaseException:
        connection.close()
        raise
    return connection, (status.st_dev, status.st_ino), {suffix: _identity_of(file + suffix) for suffix in ("-wal", "-shm")}


def _outage_line(path: Path, spool: Spool, reason: str) -> tuple[str, bool]:
    """What an outage of the ledger file says, and whether its spool cannot be written either."""
    try:
        spool.open()
    except (sqlite3.Error, OSError) as error:
        broken, kept = (
            True,
            f"rows are kept in memory for this session only (the spool {spool.path} cannot be written either: {_reason(error)})",
        )
    else:
        broken, kept = False, f"rows are kept in memory for this session and wait in {spool.path} until it can be written again"
    return f"cannot use the usage ledger {path} ({reason}): {kept}; {_advice(reason)}", broken


class LedgerFile:
    """The ledger file, watched (see the module's docstring); its lock serializes every use.

    ``connect()`` gives the open file, checked to be the one at the path; ``failed(error)`` says what a
    failure means; ``keep(...)`` puts rows in the spool while the file cannot be written.
    """

    #: Longest wait, in seconds, between two attempts to write a file that cannot be written.
    max_backoff = 10.0
    #: The busy timeout, in seconds, of those attempts: a file locked by another program must not stall every call.
    probe_timeout = 0.1

    def __init__(self, location: SQLiteFile, busy_timeout: float = 5.0, spool: Path | None = None) -> None:
        self.location = location
        self.path = location.path
        self.busy_timeout = busy_timeout
        #: The line said when the latest outage began ("" before any).
        self.last_said = ""
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None
        self._file = str(location.path)  # absolute: a later change of directory must not look like a vanished file
        self._spool_at = spool
        self._spool: Spool | None = None
        self._identity: tuple[int, int] | None = None  # the open file's device and inode
        self._companions: dict[str, tuple[int, int] | None] = {}  # and its -wal and -shm files'
        # A file that vanished while open, kept open until what it holds is in the file at the path.
        self._vanished: _Vanished | None = None
        self.away = False  # the file cannot be written: rows wait in the spool
        self._retry_at = 0.0
        self._delay = 0.0
        self._spool_broken = False
        _watched.add(self)

    @property
    def spool(self) -> Spool:
        """Where rows and cache entries wait while the file cannot be written."""
        if self._spool is None:
            self._spool = Spool(self._spool_at or spool_path(self.location))
        return self._spool

    # -- connection: opened on first use, watched, reopened ----------------------------------------------
    def connect(self, retry_now: bool = False) -> sqlite3.Connection:
        """The open ledger, still the file at its path (caller holds the lock).

        Reopened when the file vanished, or once the next attempt is due after an outage (``retry_now``: at
        once); until then an outage raises the line said when it began.
        """
        connection = self.connection
        if connection is not None and not self.away and self.at_path():
            return connection
        if self.away and not retry_now and time.monotonic() < self._retry_at:
            raise self._outage()
        return self._open()

    def at_path(self) -> bool:
        """Whether the open file is still the one at the ledger's path: one ``stat``, a few microseconds."""
        return _identity_of(self._file) == self._identity

    def _open(self) -> sqlite3.Connection:
        """Open the file at the ledger's path, with what a vanished file held and what waits in the spool."""
        stale, self.connection = self.connection, None
        if stale is not None:
            if self._vanished is None and not self.at_path():
                how = "replaced" if os.path.lexists(self._file) else "moved or deleted"
                self._vanished = _Vanished(stale, self._identity, self._companions, how)
            else:
                stale.close()
        vanished = self._vanished
        connection: sqlite3.Connection | None = None
        try:
            if vanished is not None:
                vanished.clear_companions(self._file)
            timeout = min(self.busy_timeout, self.probe_timeout) if self.away else self.busy_timeout
            connection, identity, companions = _new_connection(self._file, timeout)
            copied = None
            if vanished is not None:
                copied = vanished.copy_into(connection, identity, self.path)
                self._vanished = None
            written = self._drain(connection)
            if self.away:
                connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except (sqlite3.Error, OSError) as error:
            if connection is not None:
                connection.close()
            raise self.failed(error) from error
        self.connection, self._identity, self._companions = connection, identity, companions
        self._recovered(copied, written, vanished.how if vanished is not None else "")
        return connection

    def _drain(self, connection: sqlite3.Connection) -> int:
        """Write what waits in the spool (rows in order, then cache entries), each row once; the rows written."""
        spool, written = self.spool, 0
        while batch := spool.peek():
            with committed(connection):
                written += apply(connection, [(uid, release, values) for _, uid, release, values in batch], ())
            spool.drop(batch[-1][0])
        while entries := spool.peek_cache():
            with committed(connection):
                apply(connection, (), [entry for _, entry in entries])
            spool.drop_cache(entries[-1][0])
        return written

    def failed(self, error: BaseException) -> LedgerUnavailableError:
        """What a failure means (caller holds the lock): a file that is not a ledger is given up; anything else is
        an outage, said once: rows wait in the spool, and the file is tried again after a growing wait."""
        reason = _reason(error)
        if any(words in reason for words in _NOT_A_LEDGER):
            return self.unavailable(error)
        if self._vanished is not None:
            reason = f"it was {self._vanished.how} while in use and cannot be recreated: {reason}"
        if not self.away:
            self.away, self._delay = True, 0.0
            self.last_said, self._spool_broken = _outage_line(self.path, self.spool, reason)
            notice(self.last_said)
        self._delay = min(max(self._delay * 2, 0.25), self.max_backoff)
        self._retry_at = time.monotonic() + self._delay
        return self._outage()

    def _outage(self) -> LedgerUnavailableError:
        return LedgerUnavailableError(self.last_said, transient=True, said=True)

    def _recovered(self, copied: int | None, written: int, how: str) -> None:
        """Say what a reopening did, if it was news: a vanished file's rows copied (it was ``how``), waiting rows written."""
        was_away, self.away, self._delay = self.away, False, 0.0
        waiting = f"{_plural(written, 'waiting row')} written"
        if copied is not None:
            place = "recreated at its path" if how == "moved or deleted" else "merged into the file now at its path"
            line = (
                f"the usage ledger {self.path} was {how} while in use: {place} with the {_plural(copied, 'row')} "
                "it held (every session's), its cached answers and budget holds"
            )
            line += f", and {waiting}" if was_away else ""
            notice(f"{line}; to start an empty ledger, delete it while no kernel has it open")
        elif was_away:
            notice(f"the usage ledger {self.path} can be written again: {waiting}")

    def unavailable(self, error: BaseException) -> LedgerUnavailableError:
        reason = _reason(error)
        return LedgerUnavailableError(
            f"cannot use the usage ledger {self.path} ({reason}): rows are kept in memory for this session; {_advice(reason)}"
        )

    def keep(self, entries: Sequence[Entry], cache: Sequence[SpooledEntry]) -> None:
        """Rows and cache entries into the spool, committed (a killed process loses nothing); caller holds the lock."""
        try:
            self.spool.put_many(entries, cache)
        except (sqlite3.Error, OSError) as error:
            if not self._spool_broken:
                self._spool_broken = True
                notice(f"cannot write the spool {self.spool.path} ({_reason(error)}): rows are kept in memory for this session only")

    def cached(self, keys: Sequence[str]) -> dict[str, str]:
        """The cached payloads of ``keys`` (caller holds the lock). While the file cannot be written: what the file
        still open holds (the vanished one, or the one that cannot be written) and the answers waiting in the
        spool, so that a map run again sends nothing answered."""
        try:
            connection: sqlite3.Connection | None = self.connect()
        except LedgerUnavailableError as error:
            if not error.said:
                raise
            connection = None
        found: dict[str, str] = {}
        readable = connection or (self._vanished.connection if self._vanished is not None else None) or self.connection
        try:
            found.update(cached(readable, keys) if readable is not None else {})
        except sqlite3.Error as error:
            if connection is not None:
                raise self.failed(error) from error
        if self.away:
            try:
                found.update(self.spool.cached(keys))
            except (sqlite3.Error, OSError):
                pass  # said when the spool could not be written
        return found

    def let_go(self) -> None:
        """Close the connection to a file that was deleted or replaced, without writing it back: for a reader (the
        Jupyter Server extension), which must not bring back a ledger the user deleted. The next use opens whatever
        file is at the path then."""
        with self.lock:
            if self.connection is not None:
                self.connection.close()
            self.connection = self._vanished = None
            self._identity = None

    def close(self) -> None:
        """Write what a vanished file held and what waits in the spool, if the file can be written now; then close."""
        with self.lock:
            if self.connection is not None or self.away:
                try:
                    self.connect(retry_now=True)
                except LedgerUnavailableError:
                    pass  # still in the spool: the next kernel writes it
            if self._vanished is not None:
                self._vanished.close()
            if self.connection is not None:
                self.connection.close()
            self.connection = self._vanished = None
            self._identity = None
            self.away = False
            if self._spool is not None:
                self._spool.close()


_watched: weakref.WeakSet[LedgerFile] = weakref.WeakSet()


@atexit.register
def _at_exit() -> None:
    """A process that ends writes what a vanished file held and what waits in the spool, if the ledger can be written."""
    for ledger in list(_watched):
        try:
            ledger.close()
        except Exception:
            pass  # in the spool still: the next kernel writes it
