"""What every ledger backend shares: the ``Store`` protocol, budget holds and limits, this session's rows in
memory (where the default ledger lives: ``_locations.default_usage_db``).

A ``Store`` persists usage rows, budget holds and the response cache: the SQLite file (``_sqlite``) or a team's
PostgreSQL server (``_postgres``); ``_ledger.open_store`` picks one. Knows nothing of litellm.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ipyllm._batchclaim import Claim, is_stale
from ipyllm._batchledger import BatchRecord
from ipyllm._notices import notice
from ipyllm._usage import UsageRow, utc_now

if TYPE_CHECKING:
    import pandas as pd

    from ipyllm._views import Window

__all__ = [
    "BatchRecord",
    "CacheEntry",
    "Claim",
    "Headroom",
    "Hold",
    "Limit",
    "MemoryLedger",
    "Refusal",
    "Sizer",
    "Store",
    "fixed",
    "process_alive",
    "tightest",
]


@dataclass(frozen=True)
class Hold:
    """A budget reservation: the estimated cost of one call in flight, counted as spent until the call's
    row settles it. ``expires`` bounds it, so a hold left by a kernel that died never blocks a budget."""

    id: str
    amount: float
    session: str
    user: str | None
    host: str | None
    pid: int
    created: datetime
    expires: datetime


@dataclass(frozen=True)
class Limit:
    """A spending limit checked against the ledger: spend since ``since`` (of ``user`` only, when set)."""

    setting: str
    limit: float
    since: datetime
    user: str | None = None


@dataclass(frozen=True)
class Headroom:
    """What a limit leaves for one more call: the spend recorded against it (rows) and the holds of calls in
    flight (their sum and how many), as read in the transaction that takes the next hold.

    On a ledger others write to, ``team`` and ``by_user`` (today's spend of everyone and of the hold's user,
    holds included) when the store knows them. A refusal is the headroom that was too small.
    """

    limit: Limit
    spent: float
    held: float = 0.0
    holds: int = 0
    team: float | None = None
    by_user: float | None = None

    @property
    def left(self) -> float:
        """USD the limit leaves once the holds in flight are counted as spent."""
        return self.limit.limit - self.spent - self.held


#: A refusal is the headroom that could not pay for the call.
Refusal = Headroom


#: Sizes a hold from the headroom every limit leaves: the USD to hold, or None to refuse.
Sizer = Callable[[Sequence[Headroom]], float | None]


def fixed(amount: float) -> Sizer:
    """A sizer for a hold of a known amount: held when it fits every headroom."""

    def size(rooms: Sequence[Headroom]) -> float | None:
        return amount if all(amount <= room.left + 1e-12 for room in rooms) else None

    return size


def tightest(rooms: Sequence[Headroom]) -> Headroom:
    """The headroom that leaves the least."""
    return min(rooms, key=lambda room: room.left)


class MemoryLedger:
    """This session's rows, in call order; safe to append from several threads.

    ``subscribe(callback)`` calls ``callback(row)`` after each append (from the appending thread) and
    returns a function that unsubscribes.
    """

    def __init__(self) -> None:
        self._rows: list[UsageRow] = []
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[UsageRow], object]] = []
        #: Provider batches recorded while no ledger is in use (``:memory:``).
        self._batches: dict[str, BatchRecord] = {}
        #: Claims on sending a map's batches (``_batchclaim``), by map key.
        self._claims: dict[str, Claim] = {}

    def append(self, row: UsageRow) -> None:
        with self._lock:
            self._rows.append(row)
            if not math.isnan(row.cost_usd):
                self._spent[row.session] = self._spent.get(row.session, 0.0) + row.cost_usd
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(row)
            except Exception as error:  # a broken display must not break the call that was recorded
                notice(f"a usage listener failed: {error!r}")

    def rows(self, session: str | None = None) -> list[UsageRow]:
        with self._lock:
            rows = list(self._rows)
        return rows if session is None else [r for r in rows if r.session == session]

    def subscribe(self, callback: Callable[[UsageRow], object]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def spend(self, since: datetime | None = None, *, session: str | None = None, user: str | None = None) -> float:
        """USD recorded in memory (since ``since``; of ``session`` / ``user`` only), unknown prices counted as 0.

        A session's total is kept as rows arrive, so the per-call budget check does not rescan the rows.
        """
        if since is None and user is None:
            with self._lock:
                return sum(self._spent.values()) if session is None else self._spent.get(session, 0.0)
        return sum(
            r.cost_usd
            for r in self.rows(session)
            if not math.isnan(r.cost_usd) and (since is None or r.timestamp >= since) and (user is None or r.user == user)
        )

    def __len__(self) -> int:
        return len(self._rows)

    # -- provider batches, when no ledger keeps them ------------------------------------------------------------
    def batch_add(self, record: BatchRecord) -> None:
        with self._lock:
            self._batches[record.id] = record

    def batch_update(self, record: BatchRecord) -> None:
        with self._lock:
            known = self._batches.get(record.id)
            if known is not None and not known.done:
                self._batches[record.id] = record

    def batches(self, map_key: str | None = None, batch_id: str | None = None) -> list[BatchRecord]:
        with self._lock:
            records = list(self._batches.values())
        return [r for r in records if (map_key is None or r.map_key == map_key) and (batch_id is None or r.id == batch_id)]

    def batch_collect(self, batch_id: str, status: str = "collected") -> bool:
        """Mark the batch's results taken; False when they already were (the caller then records nothing)."""
        with self._lock:
            known = self._batches.get(batch_id)
            if known is None or known.done:
                return False
            known.status, known.collected = status, utc_now()
            return True

    def batch_claim(self, claim: Claim) -> Claim | None:
        """Claim the map for ``claim``'s session: None when taken (a stale claim taken over), else the claim holding it."""
        with self._lock:
            holder = self._claims.get(claim.map_key)
            if holder is not None and not is_stale(holder, claim.host, process_alive):
                return holder
            self._claims[claim.map_key] = claim
            return None

    def batch_unclaim(self, claim: Claim) -> None:
        with self._lock:
            if self._claims.get(claim.map_key) == claim:
                del self._claims[claim.map_key]


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


#: A response cache entry: key, kind, model, payload (JSON text).
CacheEntry = tuple[str, str, str, str]


class Store(Protocol):
    """A persistent ledger: usage rows, budget holds and the response cache. Every method raises
    ``LedgerUnavailableError`` (one line, saying what to do) when the store cannot be used."""

    #: How the store is named to the user (a path, or a URL without its password).
    name: str
    #: True for a ledger shared by a team (a server): the picker then shows the team's spend today.
    shared: bool
    #: The SQL the store speaks, for the ledger's views (``ipyllm._views``): ``sqlite`` or ``postgresql``.
    dialect: str

    def append(self, row: UsageRow, release: str | None = None) -> None: ...
    def append_many(self, rows: Sequence[UsageRow], entries: Sequence[CacheEntry] = ()) -> None:
        """Several rows (no holds to settle) and cache entries, committed together: a batch's writer."""
        ...

    def reserve(self, hold: Hold, limits: Sequence[Limit], size: Sizer | None = None) -> Hold | Refusal:
        """In one transaction, read what each of ``limits`` leaves (rows and live holds of every kernel) and take
        ``hold`` with the amount ``size`` gives for those headrooms (default: ``hold.amount`` if it fits);
        return the hold taken, or the tightest headroom when ``size`` refuses."""
        ...

    def release(self, hold_id: str) -> None: ...
    def spend(self, since: datetime, exclude_session: str | None = None, user: str | None = None) -> float: ...
    def frame(self, exclude_session: str | None = None, window: Window | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows (but ``exclude_session``'s; of ``window`` only, filtered in the database), oldest first, as the usage
        frame (of ``columns`` only, and the time)."""
        ...

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only query in the store's ``dialect`` (its placeholders: ``?`` or ``%s``)."""
        ...

    def cache_get(self, key: str) -> str | None: ...
    def cache_get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The payloads of those of ``keys`` that are cached: a batch looks up its rows ahead, many at once."""
        ...

    def cache_put(self, key: str, kind: str, model: str, payload: str) -> None: ...

    # -- provider batches (``_batchledger``) --------------------------------------------------------------------
    def batch_add(self, record: BatchRecord) -> None:
        """Record a batch the provider has just created."""
        ...

    def batch_update(self, record: BatchRecord) -> None:
        """The provider's latest status, counts and files for the batch (unless its results are already taken)."""
        ...

    def batches(self, map_key: str | None = None, batch_id: str | None = None) -> list[BatchRecord]:
        """The recorded batches (of one map, or the one with that id), oldest first."""
        ...

    def batch_collect(
        self, batch_id: str, rows: Sequence[UsageRow], entries: Sequence[CacheEntry], release: str | None, status: str = "collected"
    ) -> bool:
        """Take the batch's results once: in one transaction, mark it ``status`` (``collected``; ``lost`` when the
        provider no longer knows it), write its rows and cache entries, and end its budget hold ``release``. False,
        with nothing written, when its results were already taken (by another kernel)."""
        ...

    def batch_claim(self, claim: Claim) -> Claim | None:
        """Claim sending the map ``claim.map_key`` for ``claim``'s session, in one transaction: None when taken (a
        stale claim is taken over: ``_batchclaim.is_stale``), else the live claim another session holds."""
        ...

    def batch_unclaim(self, claim: Claim) -> None:
        """End ``claim`` (its batches are recorded, or its submission failed); another's claim is left alone."""
        ...

    def close(self) -> None: ...
