"""One batch on ipyllm's event loop: workers take the prepared rows, each row is one budgeted call, its row filed.

A fixed number of worker coroutines take rows from one iterator (never a task per row, so memory stays flat at
100,000 rows) and send them with ``litellm.acompletion`` through the client's async path: the session's retry
policy per call, one usage row per call (``source`` ``map``, ``batch`` the batch's id), every attempt paced by
the batch's ``Pace``. Each answer is kept in the cache (for resume); rows and cache entries go through the
batch's ``Writer`` when no spending limit is set.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from typing import Any

from ipyllm._batchdata import Batch, MissingValue
from ipyllm._budget import Need, Reservation
from ipyllm._calls import Prepared, cut_by_budget, cut_message
from ipyllm._engine import Reply
from ipyllm._helpers import Spread
from ipyllm._litellm import load_litellm
from ipyllm._pace import Pace
from ipyllm._progress import Tally
from ipyllm._retry import RetryNote
from ipyllm._rows import Rows
from ipyllm._session import Session
from ipyllm._store import Headroom
from ipyllm._writer import Writer
from ipyllm.errors import AuthenticationError, BudgetExceededError, LLMError, MissingKeyError, UnknownModelError

__all__ = ["Run"]

#: Errors that every row would meet too: the batch stops sending at the first one.
_FATAL = (MissingKeyError, AuthenticationError, UnknownModelError)


async def _acompletion(**kwargs: Any) -> Any:
    """``litellm.acompletion`` of this process (imported by the time a ``Spread`` sends here)."""
    return await load_litellm().acompletion(**kwargs)


class Run:
    """One batch: its rows, its result (``Batch``), its pace, its writer, and the calls it has in flight."""

    #: Rows answered with no text (not cached, so that running the map again asks again), and the first one's note.
    empty_answers = 0
    empty_note: str | None = None

    def __init__(self, session: Session, rows: Rows, concurrency: int, processes: int, resume: bool) -> None:
        self.session = session
        self.rows = rows
        self.settings = rows.settings
        self.batch = Batch(uuid.uuid4().hex[:12], rows.index, Tally(rows.total), rows.shape, session)
        self.batch.replies = [None] * rows.total
        self.batch.parsed = [None] * rows.total
        self.batch.row_errors = [None] * rows.total
        self.tally = self.batch.tally
        self.tally.budget = self.settings.budget_usd
        self.concurrency, self.processes, self.resume = concurrency, processes, resume
        self.stamp = session.stamper("map", batch=self.batch.id)
        limited = any(getattr(self.settings, name) is not None for name in ("budget_usd", "daily_budget_usd", "user_daily_budget_usd"))
        self.writer = None if limited else Writer(session.records, self.batch.id)
        self.stop = False
        self.send: Any = None
        self.flight = InFlight()
        #: With prompt caching: set once the first row sent has ended (the other rows wait for it), and whether a
        #: worker is sending it.
        self._primed: Any = None
        self._priming = False

    def counted(self, row: Any, release: str | None = None) -> None:
        if self.writer is not None and release is None:
            self.writer.row(self.stamp(row))
        else:
            self.session.records.record(self.stamp(row), release)
        if isinstance(row.cost_usd, float) and not math.isnan(row.cost_usd):
            self.tally.spent += row.cost_usd
        if row.cached_tokens or row.cache_creation_tokens or row.tier == "batch":
            self.tally.discounted += 1

    async def run(self) -> None:
        import asyncio

        pace = Pace(self.concurrency, self.tally)
        self.flight.ended_calls = asyncio.Condition()
        self._primed = asyncio.Event() if self.rows.cache is not None else None
        rows = self.rows.calls(self.counted, self.session.records, self.resume)
        if self.processes > 1 and self.session.client._acompletion is None:
            self.send = Spread(_acompletion, self.processes - 1)
            await self.send.ready(self.settings.model, self.settings.base_url)

        async def worker() -> None:
            for position, call, problem, hit in rows:
                if isinstance(problem, MissingValue):
                    self.batch.skipped(position, problem)
                    continue
                if call is None:
                    self.batch.failed(position, problem or "template")
                    continue
                await self.one(position, call, hit, pace)

        workers = [asyncio.ensure_future(worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def one(self, position: int, call: Prepared, hit: dict[str, Any] | None, pace: Pace) -> None:
        """One row: its cached answer, or one call within a budget reservation, its outcome in the batch."""
        batch = self.batch
        cached = call.from_cache(hit)
        if isinstance(cached, Reply):
            batch.answered(position, cached)
            return
        first = False
        if self._primed is not None and not self._primed.is_set():
            # A map with prompt caching sends its first row alone: the others then read the cache it wrote
            # instead of each writing it (Anthropic bills a write at 1.25x the input price; OpenAI reads nothing
            # from a prefix it has not finished caching).
            if self._priming:
                await self._primed.wait()
            else:
                self._priming = first = True
        try:
            if self.stop:
                batch.not_sent(position)
                return
            await self.send_row(position, call, pace)
        finally:
            if first:
                assert self._primed is not None
                self._primed.set()

    async def send_row(self, position: int, call: Prepared, pace: Pace) -> None:
        """One row sent: a budget reservation, the call (the map's prompt caching applied), its outcome in the batch."""
        import asyncio

        batch = self.batch

        sent = [0.0]  # when the row's latest attempt went out

        def on_retry(note: RetryNote) -> None:
            self.tally.retries += 1
            if "429" in note.reason:
                pace.rate_limited(note.wait, sent_at=sent[0])

        reservation = await self.reserve(call)
        if reservation is None:
            batch.not_sent(position)
            return
        with reservation:
            self.flight.count += 1
            try:
                reply = await self.session.client.achat(
                    call.settings,
                    call.payload,
                    report=reservation.report,
                    on_retry=on_retry,
                    extra=call.extra,
                    around_attempt=lambda: pace.attempt(sent),
                    send=self.send,
                    cap=reservation.cap,
                    cache=self.rows.cache,
                )
            except asyncio.CancelledError:
                batch.interrupted(position)
                raise
            except LLMError as error:
                batch.failed(position, f"{type(error).__name__}: {error.message}")
                if isinstance(error, _FATAL):
                    self.stop = True
                    batch.stop_reason = error.message
                return
            finally:
                self.flight.count -= 1
                await self.flight.ended()
        pace.succeeded()
        if not batch.answered(position, reply):  # a reply that does not fit the schema: its error says so
            return
        if cut_by_budget(reply, reservation):  # not kept for resume: with more budget, the whole reply
            self.tally.cut += 1
            batch.cut_message = cut_message(reservation)
        elif not reply.text:
            self.empty_answers += 1
            self.empty_note = self.empty_note or reply.note
        call.keep(reply, self.writer.cache if self.writer is not None else self.session.records.cache_put)

    # -- budgets: a refusal while the batch's own calls hold room is not the end ---------------------------------
    async def reserve(self, call: Prepared) -> Reservation | None:
        """Hold this row's worst case, sized to what the budgets leave; None once they cannot pay for it.

        A refusal while this batch's own calls are in flight is not the end: their holds are worst cases, and
        settle at what the calls really cost, so the row waits for one of them to end and asks again. Holds of
        other kernels are waited for too, while they could free enough room. The batch stops sending (one
        ``over_budget`` row) only when nothing in flight could make room.
        """

        known: list[Need] = []

        def need() -> Need:
            """Counted once, and only under a limit: counting a prompt's tokens costs more than the rest of the row."""
            if not known:
                known.append(call.need())
            return known[0]

        while not self.stop:
            try:
                return self.session.reserve(call, need, quiet=True)
            except BudgetExceededError as error:
                if await self.flight.room_may_come(error.refusal, need()):
                    continue
                if self.stop:
                    break
                self.stop = True
                self.batch.stop_reason = self.batch.budget_message = error.message
                self.session.budgets.refused(error, self.counted)
        return None

    # -- the end ----------------------------------------------------------------------------------------------------
    def finish_quietly(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> Batch:
        self.finish_quietly()
        batch = self.batch
        for position, error in enumerate(batch.row_errors):
            if error is None and batch.replies[position] is None:  # never reached: interrupted before its turn
                batch.not_sent(position)
        batch.build_result()
        batch.summarize()
        self.session.last_batch = batch
        return batch


class InFlight:
    """A batch's calls in flight, and a condition notified as each ends (made on the batch's loop): what a row refused
    by a budget waits for, since a call that ends settles its hold at what it really cost."""

    def __init__(self) -> None:
        self.count = 0
        self.ended_calls: Any = None

    async def room_may_come(self, room: Headroom | None, need: Need) -> bool:
        """After a refusal: True once it is worth asking again (a call of the batch ended, or a while passed while
        other kernels' calls hold room that could be freed); False when nothing in flight could make room."""
        import asyncio

        if room is None:  # no price: no wait makes room
            return False
        if self.count:
            await self.wait_for_an_end()
            return True
        if room.holds and room.limit.limit - room.spent >= need.minimum:
            await asyncio.sleep(0.25)  # another kernel's calls: they end on their own
            return True
        return False

    async def wait_for_an_end(self) -> None:
        """Until one of the batch's calls ends (at most half a second: a call may end before the wait starts)."""
        import asyncio

        assert self.ended_calls is not None
        async with self.ended_calls:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ended_calls.wait(), 0.5)

    async def ended(self) -> None:
        """A call of the batch ended: rows waiting for room ask again."""
        if self.ended_calls is not None:
            async with self.ended_calls:
                self.ended_calls.notify_all()
