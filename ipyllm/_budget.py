"""Spending limits as reservations: every call holds its estimated cost while in flight, whoever makes it.

Before a call is sent, ``Budgets.reserve`` takes a ``Hold`` of the call's estimated cost (its upper bound)
unless spend plus every hold in flight would pass a limit; the call's usage row settles the hold when the
call ends (in the ledger, in the same transaction as the row). So threads, coroutines, batch workers and
kernels sharing a ledger can never together pass a limit:

- ``budget_usd``: this session's rows and holds, in memory (one lock per session);
- ``daily_budget_usd``: every row and hold in the ledger since local midnight (the ledger's own
  transaction makes kernels take holds one at a time);
- ``user_daily_budget_usd``: the same, for this user's rows and holds only.

A model without a known price cannot be counted, so with a limit set it is refused before sending.
Knows nothing of litellm: the caller passes the estimate.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from ipyllm._config import Settings
from ipyllm._errors import BudgetExceededError
from ipyllm._ledger import Hold, LedgerUnavailableError, Limit, MemoryLedger, Refusal, Store, UsageRow

__all__ = ["Budgets", "Reservation", "host_name", "local_midnight", "usd", "user_name"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def local_midnight() -> datetime:
    """The start of today in the machine's local time zone (the daily budgets' window)."""
    return datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)


def user_name(settings: Settings | None = None) -> str:
    """Who the rows name: the ``user`` setting, else ``JUPYTERHUB_USER``, else the login name."""
    if settings is not None and settings.user:
        return settings.user
    return os.environ.get("JUPYTERHUB_USER") or _login_name()


@lru_cache(maxsize=1)
def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


@lru_cache(maxsize=1)
def host_name() -> str:
    return socket.gethostname()


def usd(amount: float, *, limit: bool = False) -> str:
    """Spend to a hundredth of a cent (``$0.4812``), smaller amounts to two digits (``$0.000042``);
    a limit as it was set (``$0.50``)."""
    from ipyllm._display import format_cost

    if limit and round(amount, 2) == amount:
        return f"${amount:.2f}"
    return format_cost(amount) if 0 < amount < 0.0001 else f"${amount:.4f}"


def hold_lifetime(settings: Settings) -> float:
    """Seconds a hold may live: every attempt's timeout and every retry's longest wait, plus a minute."""
    return settings.timeout * (settings.num_retries + 1) + settings.retry_max_wait * settings.num_retries + 60


@dataclass
class Reservation:
    """One call's hold on the budgets. Pass ``report`` as the client's report callback; ``release()`` in a
    ``finally`` frees the hold if the call ended without a row (it is a no-op after ``report``)."""

    budgets: Budgets
    hold: Hold | None
    record: Callable[..., Any]
    in_store: bool = False
    settled: bool = field(default=False, init=False)

    def report(self, row: UsageRow) -> None:
        self.settled = True
        self.budgets.settle(self, row)

    def release(self) -> None:
        if not self.settled:
            self.settled = True
            self.budgets.release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Budgets:
    """The holds of this session, and the check that takes them.

    Parameters
    ----------
    session_id
        This session's id (its rows and holds).
    ledger
        This session's rows in memory.
    store
        Returns the ledger store (None for ``:memory:`` or an unusable one).
    warn_once
        Says something once per key.
    """

    def __init__(
        self,
        session_id: str,
        ledger: MemoryLedger,
        store: Callable[[], Store | None],
        warn_once: Callable[[str, str], None],
    ) -> None:
        self.session_id = session_id
        self.ledger = ledger
        self._store = store
        self._warn_once = warn_once
        self._lock = threading.Lock()
        self._holds: dict[str, Hold] = {}

    @property
    def held(self) -> float:
        """USD held by this session's calls in flight."""
        with self._lock:
            return sum(h.amount for h in self._holds.values())

    def reserve(
        self, settings: Settings, kind: str, model: str, provider: str | None, guess: Callable[[], float], record: Callable[..., Any]
    ) -> Reservation:
        """Hold the call's estimated cost, or refuse it: an ``over_budget`` row and ``BudgetExceededError``."""
        limits = [name for name in ("budget_usd", "daily_budget_usd", "user_daily_budget_usd") if getattr(settings, name) is not None]
        if not limits:
            return Reservation(self, None, record)
        cost = guess()
        if math.isnan(cost):
            message = (
                f"no price is known for {model}, so {limits[0]} cannot count it: give it one with prices "
                f"(e.g. ipyllm.config.prices = {{{model!r}: 'gpt-4o-mini'}}, or per-token input/output prices), or unset {limits[0]}"
            )
            self._refuse(kind, model, provider, message, record)
        now = datetime.now(timezone.utc)
        user = user_name(settings)
        hold = Hold(
            id=uuid.uuid4().hex,
            amount=cost,
            session=self.session_id,
            user=user,
            host=host_name(),
            pid=os.getpid(),
            created=now,
            expires=now + timedelta(seconds=hold_lifetime(settings)),
        )
        in_store = False
        with self._lock:
            refusal = None
            if settings.budget_usd is not None:
                spent = self.ledger.spend(session=self.session_id) + sum(h.amount for h in self._holds.values())
                if spent + cost > settings.budget_usd:
                    refusal = Refusal(Limit("budget_usd", settings.budget_usd, _EPOCH), spent)
            shared = self._shared_limits(settings, user)
            if refusal is None and shared:
                refusal, in_store = self._reserve_shared(hold, shared)
            if refusal is None:
                self._holds[hold.id] = hold
        if refusal is not None:
            self._refuse(kind, model, provider, refusal_message(refusal, cost, user), record)
        return Reservation(self, hold, record, in_store)

    def _shared_limits(self, settings: Settings, user: str) -> list[Limit]:
        midnight = local_midnight()
        limits = []
        if settings.daily_budget_usd is not None:
            limits.append(Limit("daily_budget_usd", settings.daily_budget_usd, midnight))
        if settings.user_daily_budget_usd is not None:
            limits.append(Limit("user_daily_budget_usd", settings.user_daily_budget_usd, midnight, user))
        return limits

    def _reserve_shared(self, hold: Hold, limits: list[Limit]) -> tuple[Refusal | None, bool]:
        """Take the hold in the ledger (atomic across kernels); in memory when there is no usable ledger."""
        store = self._store()
        if store is not None:
            try:
                return store.reserve(hold, limits), True
            except LedgerUnavailableError as error:
                self._warn_once(f"store:{store.name}", str(error))
        # This session's rows and holds are all that can be known.
        for limit in limits:
            spent = self.ledger.spend(since=limit.since, user=limit.user)
            spent += sum(h.amount for h in self._holds.values() if limit.user is None or h.user == limit.user)
            if spent + hold.amount > limit.limit:
                return Refusal(limit, spent), False
        return None, False

    def _refuse(self, kind: str, model: str, provider: str | None, message: str, record: Callable[..., Any]) -> None:
        row = UsageRow(
            kind=kind,
            model=model,
            provider=provider,
            cost_usd=0.0,
            attempts=0,
            status="over_budget",
            error=f"BudgetExceededError: {message}",
        )
        record(row)
        raise BudgetExceededError(message, usage=row)

    def settle(self, reservation: Reservation, row: UsageRow) -> None:
        """Record the call's row; its hold ends in the same ledger transaction (then in memory)."""
        hold = reservation.hold
        if hold is None:
            reservation.record(row)
            return
        # Row first, hold second: for a moment both count (never neither), so a limit is never passed.
        reservation.record(row, hold.id if reservation.in_store else None)
        with self._lock:
            self._holds.pop(hold.id, None)

    def release(self, reservation: Reservation) -> None:
        hold = reservation.hold
        if hold is None:
            return
        with self._lock:
            self._holds.pop(hold.id, None)
        store = self._store() if reservation.in_store else None
        if store is not None:
            try:
                store.release(hold.id)
            except LedgerUnavailableError:
                pass  # it expires on its own


def refusal_message(refusal: Refusal, cost: float, user: str) -> str:
    """``budget: spent $0.4812 of $0.50 this session; this call may cost up to $0.0310: raise budget_usd to go on``.

    On a ledger others write to, who spent what today: ``... of $1.00 today (ada $0.31 of it)`` for the
    team's limit, ``... of $0.30 today by ada (team $1.20)`` for the user's.
    """
    limit = refusal.limit
    scope = {"budget_usd": "this session", "daily_budget_usd": "today"}.get(limit.setting, f"today by {user}")
    others = refusal.team is not None and refusal.by_user is not None and abs(refusal.team - refusal.by_user) > 1e-12
    if others and limit.setting == "daily_budget_usd":
        scope += f" ({user} {usd(refusal.by_user or 0.0)} of it)"
    elif others and limit.setting == "user_daily_budget_usd":
        scope += f" (team {usd(refusal.team or 0.0)})"
    # Spent includes the holds of calls still in flight.
    return (
        f"budget: spent {usd(refusal.spent)} of {usd(limit.limit, limit=True)} {scope}; "
        f"this call may cost up to {usd(cost)}: raise {limit.setting} to go on"
    )
