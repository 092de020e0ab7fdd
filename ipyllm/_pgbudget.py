"""Budgets on a team ledger: holds taken on the server, and what this kernel counts while it is away.

On the server, a hold is taken in one transaction under an advisory lock, so kernels on every machine take
holds one at a time and cannot together pass a limit; the headroom read there is kept per limit. A call that
ended here counts at its cost while its row is still on the way (the server still holds its hold). While the
server is away, a limit's headroom is the one last read plus this kernel's holds and rows since (said once per
outage).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ipyllm._notices import notice
from ipyllm._pglink import ServerLink
from ipyllm._pgschema import HEADROOM, LOCK_BUDGETS, LOCK_SPACE
from ipyllm._store import Headroom, Hold, Limit, Refusal, Sizer, process_alive, tightest
from ipyllm._usage import UsageRow, micros, utc_now

if TYPE_CHECKING:
    import psycopg

__all__ = ["TeamBudgets"]


def _key(limit: Limit) -> tuple[str, int, str | None]:
    return (limit.setting, micros(limit.since), limit.user)


class TeamBudgets:
    """The holds of a team ledger's store, and this kernel's count of them (the store's lock held, but ``settled``)."""

    def __init__(self, link: ServerLink) -> None:
        self.link = link
        # The spend last read per limit, with the sequence number of holds and rows since.
        self._last_read: dict[tuple[str, int, str | None], tuple[Headroom, int]] = {}
        self._since: dict[str, tuple[int, float, str | None]] = {}
        #: Holds of this kernel's calls in flight: id -> (amount, user).
        self._live: dict[str, tuple[float, str | None]] = {}
        #: Holds whose calls ended here, their rows on the way to the server: id -> (amount held, row's cost, user).
        self._settling: dict[str, tuple[float, float, str | None]] = {}
        self._seq = 0
        self._said_in = 0  # the outage the offline count was said in

    # -- on the server -------------------------------------------------------------------------------------
    def on_server(self, connection: psycopg.Connection[Any], hold: Hold, limits: Sequence[Limit], size: Sizer) -> Hold | Refusal:
        """Take ``hold`` on the server, sized from what each limit leaves there; or refuse it (the tightest headroom)."""
        now = micros(utc_now())
        with connection.transaction(), connection.cursor() as cursor:
            # A hold lost in a server crash only frees budget early, and its call's row still comes: no fsync wait.
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_SPACE, LOCK_BUDGETS])
            cursor.execute("DELETE FROM holds WHERE expires_us <= %s", [now])
            # Holds of kernels on this machine that have died free their budget at once.
            cursor.execute("SELECT id, pid FROM holds WHERE host = %s", [hold.host])
            dead = [hold_id for hold_id, pid in cursor.fetchall() if pid and not process_alive(int(pid))]
            if dead:
                cursor.execute("DELETE FROM holds WHERE id = ANY(%s)", [dead])
            rooms = []
            for limit in limits:
                room = self._headroom(cursor, limit, limit.user, now)
                self._last_read[_key(limit)] = (room, self._seq)
                rooms.append(room)
            amount = size(rooms)
            if amount is None:
                room = tightest(rooms)
                limit = room.limit
                team = room if limit.user is None else self._headroom(cursor, limit, None, now)
                by_user = room if limit.user is not None else self._headroom(cursor, limit, hold.user, now)
                # Leaving the block commits nothing but the cleanup.
                return replace(room, team=team.spent + team.held, by_user=by_user.spent + by_user.held)
            hold = replace(hold, amount=amount)
            cursor.execute(
                'INSERT INTO holds (id, session, "user", host, pid, amount, created_us, expires_us)'
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [hold.id, hold.session, hold.user, hold.host, hold.pid, hold.amount, micros(hold.created), micros(hold.expires)],
            )
        # What the server counted is known: forget what was counted here before it.
        oldest = min((seq for _, seq in self._last_read.values()), default=self._seq)
        self._since = {k: v for k, v in self._since.items() if v[0] >= oldest}
        self.taken(hold)
        return hold

    def _headroom(self, cursor: psycopg.Cursor[Any], limit: Limit, user: str | None, now: int) -> Headroom:
        """What ``limit`` leaves on the server (of ``user``'s rows and holds only, when given).

        A call that ended here counts as spent, at its cost, while its row is still on the way and the server
        still holds its hold.
        """
        settling = dict(self._settling)  # the writer forgets entries as their rows land
        cursor.execute(HEADROOM, {"since": micros(limit.since), "user": user, "now": now, "ids": list(settling)})
        row = cursor.fetchone()
        spent, held, holds, present = row if row else (0.0, 0.0, 0, [])
        ended = [settling[hold_id] for hold_id in present or ()]
        return Headroom(
            limit,
            float(spent) + sum(cost for _, cost, _ in ended),
            max(0.0, float(held) - sum(amount for amount, _, _ in ended)),
            int(holds) - len(ended),
        )

    # -- here, while the server is away ------------------------------------------------------------------------
    def here(self, hold: Hold, limits: Sequence[Limit], size: Sizer) -> Hold | Refusal:
        """Take ``hold`` from the headroom last read plus this kernel's holds and rows since; or refuse it."""
        if self._said_in != self.link.outages:
            self._said_in = self.link.outages
            notice(f"budgets count the spend last read from {self.link.name} plus this kernel's calls until it is back")
        rooms = []
        for limit in limits:
            read, seq = self._last_read.get(_key(limit), (Headroom(limit, 0.0), 0))
            since = [(hold_id, amount) for hold_id, (s, amount, user) in self._since.items() if s >= seq and limit.user in (None, user)]
            held = [amount for hold_id, amount in since if hold_id in self._live]
            spent = sum(amount for hold_id, amount in since if hold_id not in self._live)
            rooms.append(Headroom(limit, read.spent + spent, read.held + sum(held), read.holds + len(held)))
        amount = size(rooms)
        if amount is None:
            return tightest(rooms)
        hold = replace(hold, amount=amount)
        self.taken(hold)
        return hold

    # -- this kernel's holds and rows ------------------------------------------------------------------------
    def taken(self, hold: Hold) -> None:
        self._since[hold.id] = (self._seq, hold.amount, hold.user)
        self._live[hold.id] = (hold.amount, hold.user)
        self._seq += 1

    def count(self, row: UsageRow, release: str | None) -> None:
        """A row replaces its hold in what this kernel counts."""
        cost = 0.0 if row.cost_usd != row.cost_usd else row.cost_usd  # NaN: unpriced, counted as 0
        taken = self._since.get(release) if release else None
        live = self._live.pop(release or "", None)
        if live is not None:
            self._settling[release or ""] = (live[0], cost, live[1])
        if taken is not None:
            self._since[release or ""] = (taken[0], cost, taken[2])
        elif cost:
            self._since[uuid.uuid4().hex] = (self._seq, cost, row.user)
            self._seq += 1

    def released(self, hold_id: str) -> None:
        """A hold whose call left no row counts no more."""
        self._since.pop(hold_id, None)
        self._live.pop(hold_id, None)

    def settled(self, hold_ids: Iterable[str | None]) -> None:
        """These holds' rows are on the server now. No lock: the writer calls this while it drains, which the
        foreground waits for inside the store's lock (each pop is atomic)."""
        for hold_id in hold_ids:
            if hold_id is not None:
                self._settling.pop(hold_id, None)
