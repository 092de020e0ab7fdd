"""Spending limits as reservations: every call holds the most it can cost while in flight, whoever makes it.

Before a call is sent, ``Budgets.reserve`` reads what each limit leaves: the spend recorded against it and
the holds of calls in flight. The tightest headroom sizes the call (``Need.fit``):

- a chat call gets an **output cap**, the largest number of output tokens the headroom can pay for after the
  call's input: ``cap = floor((left - input) / output price)``, never above the user's ``max_tokens`` or the
  model's own maximum output. The call is sent with it (``max_tokens``, or ``max_completion_tokens`` for the
  reasoning models that need it), so even a reply that runs to its cap fits;
- the hold is that worst case, ``input + cap * output price``, so no mix of replies can pass a limit;
- when the headroom cannot pay for the input and ``MIN_OUTPUT_TOKENS`` of output (or the user's smaller
  ``max_tokens``), the call is refused before sending: an ``over_budget`` row and ``BudgetExceededError``.

The input is counted locally (litellm's ``token_counter``: exact for OpenAI's models, close elsewhere) and
held with ``INPUT_MARGIN``, so a provider's own tokenizer counting a little more cannot pass a limit. The
call's row settles its hold when the call ends (in the ledger, in the same transaction as the row). So threads,
coroutines, batch workers and kernels sharing a ledger can never together pass a limit:

- ``budget_usd``: this session's rows and holds, in memory (one lock per session);
- ``daily_budget_usd``: every row and hold in the ledger since local midnight (the ledger's own
  transaction makes kernels take holds one at a time);
- ``user_daily_budget_usd``: the same, for this user's rows and holds only.

A model without a known price cannot be counted, so with a limit set it is refused before sending.
Knows nothing of litellm: the caller passes what the call needs.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from ipyllm._config import Settings
from ipyllm._display import format_cost
from ipyllm._store import Headroom, Hold, Limit, MemoryLedger, Sizer, Store, tightest
from ipyllm._usage import UsageRow
from ipyllm.errors import BudgetExceededError, LedgerUnavailableError

__all__ = [
    "INPUT_MARGIN",
    "MIN_OUTPUT_TOKENS",
    "Budgets",
    "Need",
    "Reservation",
    "host_name",
    "local_midnight",
    "notebook_path",
    "usd",
    "user_name",
]

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


def notebook_path() -> str | None:
    """The notebook this kernel belongs to, as Jupyter Server names it in the kernel's ``JPY_SESSION_NAME`` (None elsewhere)."""
    return os.environ.get("JPY_SESSION_NAME") or None


@lru_cache(maxsize=1)
def host_name() -> str:
    return socket.gethostname()


def usd(amount: float, *, limit: bool = False) -> str:
    """Spend to a hundredth of a cent (``$0.4812``), smaller amounts to two digits (``$0.000042``);
    a limit as it was set (``$0.50``)."""
    if limit and round(amount, 2) == amount:
        return f"${amount:.2f}"
    return format_cost(amount) if 0 < amount < 0.0001 else f"${amount:.4f}"


def hold_lifetime(settings: Settings) -> float:
    """Seconds a hold may live: every attempt's timeout and every retry's longest wait, plus a minute."""
    return settings.timeout * (settings.num_retries + 1) + settings.retry_max_wait * settings.num_retries + 60


#: A reply shorter than this is not worth paying for: a call the budget leaves less room is refused.
MIN_OUTPUT_TOKENS = 16

#: The input is counted locally and held with this margin (a provider's own tokenizer may count more).
INPUT_MARGIN = 1.1

#: Sums of floating-point dollars within this of a limit are at the limit (the ledger's own rounding).
_CENT_FRACTION = 1e-12


@dataclass(frozen=True)
class Need:
    """What one call may cost: its input, priced before sending, and for a chat call its output price per token.

    ``ceiling`` is the most output tokens the call may bill without a budget: the user's ``max_tokens``
    (``user_cap``), else the model's own maximum output. ``output`` is False for a call with no output to cap
    (embeddings).
    """

    input_cost: float
    output_cost_per_token: float = 0.0
    user_cap: int | None = None
    ceiling: int | None = None
    output: bool = True

    @property
    def priced(self) -> bool:
        return not math.isnan(self.input_cost) and not (self.output and math.isnan(self.output_cost_per_token))

    @property
    def held_input(self) -> float:
        return self.input_cost * INPUT_MARGIN

    @property
    def minimum_tokens(self) -> int:
        """The shortest reply worth sending for: ``MIN_OUTPUT_TOKENS``, or the user's smaller ``max_tokens``."""
        return min(MIN_OUTPUT_TOKENS, self.user_cap) if self.user_cap else MIN_OUTPUT_TOKENS

    @property
    def minimum(self) -> float:
        """The least headroom the call can be sent with: its input and the shortest reply worth having."""
        if not self.output:
            return self.held_input
        return self.held_input + self.minimum_tokens * self.output_cost_per_token

    def fit(self, left: float) -> tuple[float, int | None] | None:
        """The amount to hold and the output cap for ``left`` USD of headroom; None when that cannot pay for the
        input and a useful reply."""
        if not self.output or self.output_cost_per_token <= 0:
            return (self.held_input, self.ceiling) if self.held_input <= left + _CENT_FRACTION else None
        rate, left = self.output_cost_per_token, left + _CENT_FRACTION
        affordable = math.floor((left - self.held_input) / rate) if left >= self.held_input else -1
        cap = affordable if self.ceiling is None else min(self.ceiling, affordable)
        if cap > 0 and self.held_input + cap * rate > left:  # floating point rounding: the hold must fit
            cap -= 1
        if cap < self.minimum_tokens:
            return None
        return self.held_input + cap * rate, cap

    def describe(self) -> str:
        """``$0.000031 (its input and 16 output tokens)``."""
        if not self.output:
            return f"{usd(self.minimum)} (its input)"
        tokens = self.minimum_tokens
        return f"{usd(self.minimum)} (its input and {tokens:,} output token{'s' if tokens != 1 else ''})"


@dataclass
class Reservation:
    """One call's hold on the budgets. Pass ``report`` as the client's report callback; ``release()`` in a
    ``finally`` frees the hold if the call ended without a row (it is a no-op after ``report``).

    ``cap`` is the output cap to send (None: no budget, the call goes as asked); ``capped_by`` names the limit
    whose headroom set it, when that is below the user's ``max_tokens`` and the model's maximum.
    """

    budgets: Budgets
    hold: Hold | None
    record: Callable[..., Any]
    in_store: bool = False
    cap: int | None = None
    capped_by: Headroom | None = None
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


def unpriced_message(model: str, limit: str) -> str:
    """Why a call to a model without a price is refused while ``limit`` is set, and the two ways out."""
    return (
        f"no price is known for {model}, so {limit} cannot count it: give it one with prices "
        f"(e.g. ipyllm.config.prices = {{{model!r}: 'gpt-4o-mini'}}, or per-token input/output prices), or unset {limit}"
    )


def new_hold(session: str, user: str, lifetime: float, durable: bool) -> Hold:
    """An empty hold of this session and process, living ``lifetime`` seconds (``durable``: tied to no process)."""
    now = datetime.now(timezone.utc)
    return Hold(
        id=uuid.uuid4().hex,
        amount=0.0,
        session=session,
        user=user,
        host=host_name(),
        pid=0 if durable else os.getpid(),  # 0: not tied to a process (see _drop_dead_holds)
        created=now,
        expires=now + timedelta(seconds=lifetime),
    )


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
        self,
        settings: Settings,
        kind: str,
        model: str,
        provider: str | None,
        need: Callable[[], Need],
        record: Callable[..., Any],
        *,
        quiet: bool = False,
        lifetime: float | None = None,
        durable: bool = False,
    ) -> Reservation:
        """Size the call to the tightest limit and hold its worst case, or refuse it: an ``over_budget`` row and
        ``BudgetExceededError`` (``quiet``: no row yet; ``refused`` records it when the caller gives up).

        ``lifetime``: seconds the hold lives (default: the call's attempts and waits, ``hold_lifetime``); ``durable``:
        the hold outlives this process (a provider batch's, settled by whichever kernel takes its results), so no
        kernel drops it when this one dies."""
        limits = [name for name in ("budget_usd", "daily_budget_usd", "user_daily_budget_usd") if getattr(settings, name) is not None]
        if not limits:
            return Reservation(self, None, record)
        wanted = need()
        if not wanted.priced:
            raise self._refuse(kind, model, provider, unpriced_message(model, limits[0]), record, quiet=quiet)
        user = user_name(settings)
        hold = new_hold(self.session_id, user, hold_lifetime(settings) if lifetime is None else lifetime, durable)
        chosen: list[tuple[Headroom, int | None]] = []

        def size(rooms: Sequence[Headroom]) -> float | None:
            """The tightest of the store's headrooms and this session's decides; what it decided is kept in ``chosen``."""
            room = tightest([*session_rooms, *rooms])
            fit = wanted.fit(room.left)
            chosen[:] = [(room, None if fit is None else fit[1])]
            return None if fit is None else fit[0]

        in_store = False
        with self._lock:
            session_rooms = self._session_rooms(settings)
            shared = self._shared_limits(settings, user)
            if shared:
                taken, in_store = self._reserve_shared(hold, shared, size)
            else:
                amount = size([])
                taken = None if amount is None else replace(hold, amount=amount)
            if isinstance(taken, Hold):
                self._holds[taken.id] = taken
        room, cap = chosen[0]
        if not isinstance(taken, Hold):
            # The store's own refusal knows more (the team's and the user's spend) when its limit is the one.
            if isinstance(taken, Headroom) and taken.limit == room.limit:
                room = taken
            raise self._refuse(kind, model, provider, refusal_message(room, wanted, user), record, quiet=quiet, refusal=room)
        capped = cap is not None and (wanted.ceiling is None or cap < wanted.ceiling)
        return Reservation(self, taken, record, in_store, cap if wanted.output else None, room if capped else None)

    def room(self, settings: Settings) -> Headroom | None:
        """What the tightest budget leaves now (spent and held by every kernel on the ledger), holding nothing: a dry
        run's answer to which route fits; None when no budget is set."""
        user = user_name(settings)
        now = datetime.now(timezone.utc)
        probe = Hold(uuid.uuid4().hex, 0.0, self.session_id, user, host_name(), os.getpid(), now, now)
        seen: list[Headroom] = []

        def look(rooms: Sequence[Headroom]) -> float | None:
            seen[:] = rooms
            return None  # refuse: nothing is held

        with self._lock:
            rooms = self._session_rooms(settings)
            shared = self._shared_limits(settings, user)
            if shared:
                self._reserve_shared(probe, shared, look)
        rooms += seen
        return tightest(rooms) if rooms else None

    def _session_rooms(self, settings: Settings) -> list[Headroom]:
        if settings.budget_usd is None:
            return []
        return [
            Headroom(
                Limit("budget_usd", settings.budget_usd, _EPOCH),
                self.ledger.spend(session=self.session_id),
                sum(h.amount for h in self._holds.values()),
                len(self._holds),
            )
        ]

    def _shared_limits(self, settings: Settings, user: str) -> list[Limit]:
        midnight = local_midnight()
        limits = []
        if settings.daily_budget_usd is not None:
            limits.append(Limit("daily_budget_usd", settings.daily_budget_usd, midnight))
        if settings.user_daily_budget_usd is not None:
            limits.append(Limit("user_daily_budget_usd", settings.user_daily_budget_usd, midnight, user))
        return limits

    def _reserve_shared(self, hold: Hold, limits: list[Limit], size: Sizer) -> tuple[Hold | Headroom | None, bool]:
        """Take the hold in the ledger (atomic across kernels); in memory when there is no usable ledger."""
        store = self._store()
        if store is not None:
            try:
                return store.reserve(hold, limits, size), True
            except LedgerUnavailableError as error:
                self._warn_once(f"store:{store.name}", str(error))
        # This session's rows and holds are all that can be known.
        rooms = []
        for limit in limits:
            mine = [h.amount for h in self._holds.values() if limit.user is None or h.user == limit.user]
            rooms.append(Headroom(limit, self.ledger.spend(since=limit.since, user=limit.user), sum(mine), len(mine)))
        amount = size(rooms)
        return (None if amount is None else replace(hold, amount=amount)), False

    def _refuse(
        self,
        kind: str,
        model: str,
        provider: str | None,
        message: str,
        record: Callable[..., Any],
        *,
        quiet: bool = False,
        refusal: Headroom | None = None,
    ) -> BudgetExceededError:
        row = UsageRow(
            kind=kind,
            model=model,
            provider=provider,
            cost_usd=0.0,
            attempts=0,
            status="over_budget",
            error=f"BudgetExceededError: {message}",
        )
        error = BudgetExceededError(message, usage=row)
        error.refusal = refusal
        if not quiet:
            record(row)
        return error

    @staticmethod
    def refused(error: BudgetExceededError, record: Callable[..., Any]) -> None:
        """Record the ``over_budget`` row of a refusal made ``quiet`` (the caller gave up waiting for room)."""
        if error.usage is not None:
            record(error.usage)

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

    def forget(self, hold_id: str) -> None:
        """A durable hold ended in the ledger (its batch's results were taken): this session counts it no more."""
        with self._lock:
            self._holds.pop(hold_id, None)

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


def refusal_message(room: Headroom, need: Need, user: str) -> str:
    """``budget: spent $0.1000, $0.1200 held by 12 calls in flight, of $0.22 today; this call needs at least
    $0.000031 (its input and 16 output tokens): raise daily_budget_usd to go on``.

    Spent is what the ledger's rows (or this session's) record; held is what calls still in flight hold. On a
    ledger others write to, who spent what today: ``... of $1.00 today (ada $0.31 of it)`` for the team's
    limit, ``... of $0.30 today by ada (team $1.20)`` for the user's.
    """
    limit = room.limit
    scope = {"budget_usd": "this session", "daily_budget_usd": "today"}.get(limit.setting, f"today by {user}")
    others = room.team is not None and room.by_user is not None and abs(room.team - room.by_user) > 1e-12
    if others and limit.setting == "daily_budget_usd":
        scope += f" ({user} {usd(room.by_user or 0.0)} of it)"
    elif others and limit.setting == "user_daily_budget_usd":
        scope += f" (team {usd(room.team or 0.0)})"
    held = f", {usd(room.held)} held by {room.holds} call{'s' if room.holds != 1 else ''} in flight," if room.holds else ""
    return (
        f"budget: spent {usd(room.spent)}{held} of {usd(limit.limit, limit=True)} {scope}; "
        f"this call needs at least {need.describe()}: raise {limit.setting} to go on"
    )
