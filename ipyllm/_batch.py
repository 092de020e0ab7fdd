"""``ipyllm.map``: one call per row of a DataFrame, Series or list, concurrent, rate-limit aware, budgeted, resumable.

A fixed number of worker coroutines take rows from one iterator (never a task per row, so memory stays
flat at 100,000 rows) and send them with ``litellm.acompletion`` through the client's async path: the
session's retry policy per call, one usage row per call (``source`` ``map``, ``batch`` the batch's id).

- **Rate limits slow the whole batch.** A 429 pauses new attempts of every worker until its wait is over
  (the provider's Retry-After, else the retry policy's jittered wait) and halves the number of calls in
  flight; each success adds back a little (additive increase, multiplicative decrease). Restarts after a
  pause are spread over a tenth of it, so workers do not retry in lockstep.
- **Budgets.** Each call reserves its estimated cost like any call; the first refusal stops the sending:
  the remaining rows are ``<NA>`` and one line says how many were not sent and what the batch spent.
- **Resume.** Every answer is kept in the ledger's cache (whether or not ``cache`` is on) under the
  request's cache key: model, messages (template filled, system prompt, schema instruction), temperature,
  max_tokens, endpoint and extra arguments (``response_format`` included). Running the same map again
  answers those rows from the cache (``cached`` rows, cost 0) and sends only the others.
- **Interrupt.** Ctrl-C cancels the calls in flight (``interrupted`` rows) and raises ``BatchInterrupted``,
  a ``KeyboardInterrupt`` carrying the partial result; ``ipyllm.last_batch()`` holds it too.

Batches run on ipyllm's own event loop (``_loop``: a notebook's loop is busy running the cell, and litellm
wants one loop per process); the calling thread draws the progress and waits (and receives Ctrl-C).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ipyllm import _loop
from ipyllm._batchdata import Batch, BatchEstimate, Fields, MissingValue, fill, is_missing, rows_of, template_fields
from ipyllm._budget import Need, Reservation, usd
from ipyllm._calls import Prepared, cache_key, cut_by_budget, cut_message
from ipyllm._cost import estimate
from ipyllm._engine import Reply, as_messages
from ipyllm._helpers import Spread
from ipyllm._litellm import load_litellm, resolve_provider
from ipyllm._notices import notice
from ipyllm._progress import INTERVAL, Display, Tally, progress_display
from ipyllm._records import Records

# asyncio and the shared loop are imported when a batch runs, so that ``import ipyllm`` stays fast.
from ipyllm._retry import RetryNote
from ipyllm._schema import Schema
from ipyllm._session import Session
from ipyllm._store import Headroom
from ipyllm._usage import UsageRow
from ipyllm._validate import check_keywords
from ipyllm.errors import (
    AuthenticationError,
    BatchError,
    BatchInterrupted,
    BudgetExceededError,
    InvalidOutputError,
    LLMError,
    MissingKeyError,
    SettingError,
    UnknownModelError,
)

__all__ = ["Batch", "BatchEstimate", "amap", "map"]

#: Errors that every row would meet too: the batch stops sending at the first one.
_FATAL = (MissingKeyError, AuthenticationError, UnknownModelError)


# -- the run ------------------------------------------------------------------------------------------------


class _Pace:
    """Calls in flight (additive increase, multiplicative decrease) and the batch-wide rate-limit pause."""

    def __init__(self, concurrency: int, tally: Tally) -> None:
        self.ceiling = concurrency
        self.window = float(concurrency)
        self.in_flight = 0
        self.resume_at = 0.0
        self.tally = tally
        tally.concurrency = concurrency
        import asyncio

        self._slots = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Around every attempt: wait out a rate-limit pause, then for a place among the requests in flight."""
        import asyncio

        while (left := self.resume_at - time.monotonic()) > 0:
            # Restarts spread over a tenth of the pause, so workers do not retry in lockstep.
            await asyncio.sleep(left + random.uniform(0, left / 10))
        async with self._slots:
            await self._slots.wait_for(lambda: self.in_flight < max(1, int(self.window)))
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._slots:
                self.in_flight -= 1
                self._slots.notify_all()

    def rate_limited(self, wait: float) -> None:
        now = time.monotonic()
        if now >= self.resume_at:  # a new pause: halve once per pause, not once per 429
            self.window = max(1.0, self.window / 2)
            self.tally.pauses += 1
        self.resume_at = max(self.resume_at, now + wait)
        self.tally.paused_until = self.resume_at
        self.tally.concurrency = int(self.window)

    def succeeded(self) -> None:
        # One more call in flight per window of successes.
        self.window = min(float(self.ceiling), self.window + 1 / self.window)
        self.tally.concurrency = int(self.window)


class _Writer:
    """A batch's ledger writes, off the event loop and in order: a committed insert can block its thread for a
    millisecond or more on a busy disk, time in which no other call of the batch would progress. What has
    piled up while the last commit ran goes in the next one, rows and cache entries together.

    Used only when no spending limit is set: with a limit, a row must be filed before its hold ends (the
    budgets' invariant), so rows are then written as the calls end, on the loop. ``close()`` waits until every
    row is written, so that the ledger is complete when ``map`` returns.
    """

    def __init__(self, records: Records, name: str) -> None:
        self.records = records
        self._queue: queue.SimpleQueue[tuple[UsageRow | None, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"ipyllm-ledger-{name}", daemon=True)
        self._thread.start()

    def row(self, row: UsageRow) -> None:
        self._queue.put((row, None))

    def cache(self, key: str, kind: str, model: str, value: dict[str, Any]) -> None:
        self._queue.put((None, (key, kind, model, value)))

    def _work(self) -> None:
        done = False
        while not done:
            items = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(items) < 1000:
                    items.append(self._queue.get_nowait())
            if None in items:
                done = True
            rows = [item[0] for item in items if item is not None and item[0] is not None]
            entries = [item[1] for item in items if item is not None and item[0] is None]
            try:
                self.records.record_many(rows, entries)
            except Exception as error:  # a broken ledger is reported by the records; anything else is said once here
                self.records.warn_once(f"batch-writer:{type(error).__name__}", f"a usage row could not be written ({error})")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _Run:
    """Everything one batch needs, prepared in the calling thread (so template errors raise before sending)."""

    #: Rows answered with no text (not cached, so that running the map again asks again), and the first one's note.
    empty_answers = 0
    empty_note: str | None = None

    def __init__(
        self,
        session: Session,
        template: str | Callable[[Any], Any],
        data: Any,
        concurrency: int,
        schema: Any,
        resume: bool,
        overrides: dict[str, Any],
        processes: int = 1,
        missing: str = "skip",
        caller: str = "map",
    ) -> None:
        concurrency, processes = _whole("concurrency", concurrency), _whole("processes", processes)
        if not (isinstance(template, str) or callable(template)):
            raise SettingError("template must be a str with {field}s or a callable row -> prompt or messages", "template")
        if isinstance(template, str) and not template.strip():
            raise SettingError("the template is empty: write the prompt, with {field}s from the data, e.g. 'Summarize: {text}'", "template")
        if missing not in ("skip", "send"):
            raise SettingError(
                f"missing must be 'skip' (rows with a missing value in a template field are not sent) or 'send' (sent as text), "
                f"not {missing!r}",
                "missing",
            )
        index, total, self.rows = rows_of(data)
        # A str template's fields are checked for missing values (None, NaN, NA, NaT) row by row; a callable
        # template gets the row as it is and handles its own.
        self.missing_fields = template_fields(template) if isinstance(template, str) and missing == "skip" else ()
        load_litellm()
        self.session = session
        self.settings, extra = session.split_overrides(overrides)
        if extra:  # as complete() checks them: a typo such as max_token would be sent with every row, and billed
            check_keywords("chat", self.settings.model, resolve_provider(self.settings.model, self.settings.base_url), extra, caller)
        self.shape = Schema.of(schema) if schema is not None else None
        self.native = self.shape.native(self.settings) if self.shape is not None else False
        if self.shape is not None:
            _, extra = self.shape.apply([], extra, self.native)
        self.extra = extra
        self.resume = resume
        self.batch = Batch(uuid.uuid4().hex[:12], index, Tally(total), self.shape, session)
        self.batch.replies = [None] * total
        self.batch.parsed = [None] * total
        self.batch.row_errors = [None] * total
        self.template = template
        self.concurrency = concurrency
        self.tally = self.batch.tally
        self.tally.budget = self.settings.budget_usd
        self.stamp = session.stamper("map", batch=self.batch.id)
        self.writer: _Writer | None = None
        self.stop = False
        # The first row is filled here, so that a template that does not fit the data fails before sending.
        self._first = True
        prepared = self._prepare()
        head = next(prepared, None)
        self._first = False
        self.prepared: Iterator[tuple[int, list[dict[str, Any]] | None, str | None]] = itertools.chain([head] if head else [], prepared)
        limited = any(getattr(self.settings, name) is not None for name in ("budget_usd", "daily_budget_usd", "user_daily_budget_usd"))
        self.writer = None if limited else _Writer(session.records, self.batch.id)
        self.processes = processes
        self.send: Any = None
        #: Calls of this batch in flight, and a condition notified as each ends (made on the batch's loop).
        self.in_flight = 0
        self._ended: Any = None

    def messages(self, fields: Fields, row: Any) -> list[dict[str, Any]]:
        messages = as_messages(fill(self.template, fields, row), self.settings.system)
        if self.shape is not None and not self.native:
            messages, _ = self.shape.apply(messages, {}, native=False)
        return messages

    def _prepare(self) -> Iterator[tuple[int, list[dict[str, Any]] | None, str | None]]:
        """Per row: its position, its messages (None when its template failed, or a field it fills is missing) and why."""
        for position, (fields, row) in enumerate(self.rows):
            try:
                absent = next((name for name in self.missing_fields if is_missing(fields[name])), None)
                if absent is not None:
                    yield position, None, MissingValue(absent)
                    continue
                yield position, self.messages(fields, row), None
            except SettingError as error:
                if self._first:
                    raise
                yield position, None, f"template: {error}"
            except Exception as error:  # a user's callable or a format spec that does not fit this row
                if self._first:
                    raise SettingError(f"the template fails on the first row ({type(error).__name__}: {error})", "template") from None
                yield position, None, f"template: {type(error).__name__}: {error}"

    def counted(self, row: Any, release: str | None = None) -> None:
        if self.writer is not None and release is None:
            self.writer.row(self.stamp(row))
        else:
            self.session.records.record(self.stamp(row), release)
        if isinstance(row.cost_usd, float) and not math.isnan(row.cost_usd):
            self.tally.spent += row.cost_usd

    def answer(self, position: int, reply: Reply) -> None:
        batch = self.batch
        batch.replies[position] = reply.text
        if self.shape is not None:
            try:
                batch.parsed[position] = self.shape.parse(reply.text)
            except InvalidOutputError as error:
                batch.row_errors[position] = f"invalid_output: {error.detail}"
                self.tally.failed += 1
                return
        if reply.usage.status == "cached":
            self.tally.cached += 1
        else:
            self.tally.answered += 1

    def fail(self, position: int, why: str) -> None:
        self.batch.row_errors[position] = why
        self.tally.failed += 1

    def skip(self, position: int, why: MissingValue) -> None:
        """A row with a missing value in a template field: not sent, not a failure."""
        self.batch.row_errors[position] = why
        self.tally.missing += 1

    def looked_up(self) -> Iterator[tuple[int, Prepared | None, Any, dict[str, Any] | None]]:
        """The rows, each prepared as any call is (its cache key, its row stamped for this batch), and, when resuming,
        their cached answers: looked up 64 rows at a time, in one query, rather than one query per row on the loop."""
        settings, keyed = self.settings, self.resume or self.settings.cache
        while chunk := list(itertools.islice(self.prepared, 64)):
            calls = [
                None
                if messages is None
                else Prepared(
                    "chat",
                    settings,
                    messages,
                    self.extra,
                    cache_key("chat", settings, messages, self.extra) if keyed else None,
                    self.counted,
                    time.perf_counter(),
                )
                for _, messages, _ in chunk
            ]
            wanted = [call.key for call in calls if call is not None and call.key is not None]
            hits = self.session.records.cache_get_many(wanted) if self.resume and wanted else {}
            for (position, _, problem), call in zip(chunk, calls, strict=True):
                hit = hits.get(call.key) if call is not None and call.key is not None else None
                yield position, call, problem, hit

    async def one(self, position: int, call: Prepared, hit: dict[str, Any] | None, pace: _Pace) -> None:
        import asyncio

        session = self.session
        cached = call.from_cache(hit)
        if isinstance(cached, Reply):
            self.answer(position, cached)
            return
        if self.stop:
            self.not_sent(position)
            return

        def on_retry(note: RetryNote) -> None:
            self.tally.retries += 1
            if "429" in note.reason:
                pace.rate_limited(note.wait)

        reservation = await self.reserve(call)
        if reservation is None:
            self.not_sent(position)
            return
        with reservation:
            self.in_flight += 1
            try:
                reply = await session.client.achat(
                    call.settings,
                    call.payload,
                    report=reservation.report,
                    on_retry=on_retry,
                    extra=self.extra,
                    around_attempt=pace.attempt,
                    send=self.send,
                    cap=reservation.cap,
                )
            except asyncio.CancelledError:
                self.batch.row_errors[position] = "interrupted"
                self.tally.interrupted += 1
                raise
            except LLMError as error:
                self.fail(position, f"{type(error).__name__}: {error.message}")
                if isinstance(error, _FATAL):
                    self.stop = True
                    self.batch.stop_reason = error.message
                return
            finally:
                self.in_flight -= 1
                await self.ended()
        pace.succeeded()
        self.answer(position, reply)
        if self.batch.row_errors[position] is not None:  # a reply that does not fit the schema: its error says so
            return
        if cut_by_budget(reply, reservation):  # not kept for resume: with more budget, the whole reply
            self.tally.cut += 1
            self.batch.cut_message = cut_message(reservation)
        elif not reply.text:
            self.empty_answers += 1
            self.empty_note = self.empty_note or reply.note
        entry = call.entry(reply) if call.key is not None else None
        if call.key is not None and entry is not None:
            if self.writer is not None:
                self.writer.cache(call.key, "chat", call.model, entry)
            else:
                session.records.cache_put(call.key, "chat", call.model, entry)

    async def reserve(self, call: Prepared) -> Reservation | None:
        """Hold this row's worst case, sized to what the budgets leave; None once they cannot pay for it.

        A refusal while this batch's own calls are in flight is not the end: their holds are worst cases, and
        settle at what the calls really cost, so the row waits for one of them to end and asks again. Holds of
        other kernels are waited for too, while they could free enough room. The batch stops sending (one
        ``over_budget`` row) only when nothing in flight could make room.
        """

        need = call.need()
        while not self.stop:
            try:
                return self.session.reserve(call, lambda: need, quiet=True)
            except BudgetExceededError as error:
                if await self.room_may_come(error.refusal, need):
                    continue
                if self.stop:
                    break
                self.stop = True
                self.batch.stop_reason = self.batch.budget_message = error.message
                self.session.budgets.refused(error, self.counted)
        return None

    async def room_may_come(self, room: Headroom | None, need: Need) -> bool:
        """After a refusal: True once it is worth asking again (a call of the batch ended, or a while passed while
        other kernels' calls hold room that could be freed); False when nothing in flight could make room."""
        import asyncio

        if room is None:  # no price: no wait makes room
            return False
        if self.in_flight:
            await self.wait_for_an_end()
            return True
        if room.holds and room.limit.limit - room.spent >= need.minimum:
            await asyncio.sleep(0.25)  # another kernel's calls: they end on their own
            return True
        return False

    async def wait_for_an_end(self) -> None:
        """Until one of the batch's calls ends (at most half a second: a call may end before the wait starts)."""
        import asyncio

        assert self._ended is not None
        async with self._ended:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), 0.5)

    async def ended(self) -> None:
        """A call of the batch ended: rows waiting for room ask again."""
        if self._ended is not None:
            async with self._ended:
                self._ended.notify_all()

    def not_sent(self, position: int) -> None:
        self.batch.row_errors[position] = "not sent"
        self.tally.not_sent += 1

    async def run(self) -> None:
        import asyncio

        pace = _Pace(self.concurrency, self.tally)
        self._ended = asyncio.Condition()
        rows = self.looked_up()
        if self.processes > 1 and self.session.client._acompletion is None:
            self.send = Spread(load_litellm().acompletion, self.processes - 1)

        async def worker() -> None:
            for position, call, problem, hit in rows:
                if isinstance(problem, MissingValue):
                    self.skip(position, problem)
                    continue
                if call is None:
                    self.fail(position, problem or "template")
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

    def finish_quietly(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> Batch:
        self.finish_quietly()
        batch = self.batch
        for position, error in enumerate(batch.row_errors):
            if error is None and batch.replies[position] is None:  # never reached: interrupted before its turn
                self.not_sent(position)
        batch.build_result()
        batch.summarize()
        self.session.last_batch = batch
        return batch


def _report(run: _Run, errors: str) -> None:
    batch = run.batch
    if run.tally.cut and batch.cut_message is not None:
        notice(
            f"{run.tally.cut:,} of {run.tally.total:,} replies were cut short by a budget's output cap (not kept for resume); "
            f"the last: {batch.cut_message}"
        )
    if batch.budget_message is not None:
        notice(
            f"{run.tally.not_sent:,} of {run.tally.total:,} rows not sent, the batch spent {usd(run.tally.spent)}: "
            f"{batch.budget_message}, then run the same map again to send only them"
        )
    elif batch.stop_reason is not None:
        notice(f"{run.tally.not_sent:,} of {run.tally.total:,} rows not sent: {batch.stop_reason}")
    if (missing := batch.missing_message()) is not None:
        notice(missing)
    if run.empty_answers:
        said = f", e.g. {run.empty_note.split(';')[0]}" if run.empty_note else ""
        notice(
            f"{run.empty_answers:,} of {run.tally.total:,} rows got an empty answer{said}: not cached; "
            "run the same map again to ask them again"
        )
    message = batch.failure_message()
    if message is not None:
        if errors == "raise":
            raise BatchError(message, batch)
        notice(message)


def _check_errors(errors: str) -> None:
    if errors not in ("keep", "raise"):
        raise SettingError(f"errors must be 'keep' or 'raise' (got {errors!r})", "errors")


def _whole(name: str, value: Any) -> int:
    """A whole number of at least 1 (``True`` is not 4 calls in flight, nor 1)."""
    import numbers

    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise SettingError(f"{name} must be a whole number of at least 1 (got {value!r})", name)
    return int(value)


def _estimate(run: _Run) -> BatchEstimate:
    tokens = low = high = 0.0
    output_tokens = 0
    for _, messages, _problem in run.prepared:
        if messages is None:
            continue
        guess = estimate(run.settings, messages)
        tokens += guess.prompt_tokens
        low += guess.input_cost
        high += guess.upper_bound()
        output_tokens = max(output_tokens, guess.output_tokens)
    return BatchEstimate(run.settings.model, run.tally.total, int(tokens), low, high, output_tokens)


def map(  # noqa: A001 - ipyllm.map, as SPEC names it
    session: Session,
    template: str | Callable[[Any], Any],
    data: Any,
    *,
    concurrency: int = 8,
    schema: Any = None,
    errors: str = "keep",
    resume: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    processes: int = 1,
    missing: str = "skip",
    **overrides: Any,
) -> Any:
    """Send one prompt per row of ``data`` concurrently; return the replies aligned to its index.

    Parameters
    ----------
    template
        A str whose ``{field}``s are filled from each row (a DataFrame's columns and ``{index}``; a
        Series' ``{value}`` and its name; a list's strings as ``{value}``, its dicts' keys), with format
        specs and ``{{ }}`` as in ``str.format``; or a callable taking the row (a dict of a DataFrame's
        row, a Series' value, a list's item) and returning a prompt or messages.
    data
        A DataFrame, a Series, or a list (or iterable) of strings or dicts.
    concurrency
        Most calls in flight (lowered while the provider answers 429, then raised again).
    schema
        A pydantic model class or a JSON-schema dict: the result is a DataFrame with one column per field;
        a reply that does not fit is that row's ``invalid_output`` error.
    errors
        ``"keep"``: failed rows are ``<NA>`` and one line says how many failed and why; ``"raise"``:
        ``BatchError`` after the batch, with the partial result as ``.result``.
    resume
        Answer rows already answered by an earlier run of the same map from the ledger's cache (whether or
        not ``cache`` is on); False sends every row.
    progress
        A progress bar (a widget in Jupyter, a text bar in a terminal) and a one-line summary.
    dry_run
        Send nothing: return a ``BatchEstimate`` (rows, prompt tokens, cost range).
    processes
        Spread litellm's work over this many processes: this one and ``processes - 1`` helper processes,
        started on first use and kept for the session (each imports litellm: seconds, and ~300 MB). One
        process drives about 100 calls a second (litellm spends ~9 ms of CPU per call); worth it only when
        the provider allows more, with a core free for each helper. Retries, rate-limit pauses, budgets and
        the ledger stay in this process.
    missing
        ``"skip"`` (the default): a row whose template fields hold a missing value (``None``, ``NaN``, ``pd.NA``,
        ``NaT``) is not sent; its result is NA, its reason in ``ipyllm.last_batch().errors`` is ``missing value in
        {field}``, and one line after the batch counts such rows (they are not failures). ``"send"``: they are
        sent, the value as text (``None``, ``nan``, ``<NA>``). A callable template gets every row and handles its
        own missing values.
    **overrides
        As in ``complete``: ``model``, ``temperature``, ``max_tokens``, ``system``, extra litellm arguments.

    Returns
    -------
    pandas.Series or pandas.DataFrame
        Same index and order as ``data``; ``ipyllm.last_batch()`` has the per-row errors and usage.

    Raises
    ------
    BatchInterrupted
        On Ctrl-C, after cancelling the calls in flight; ``.result`` is the partial result.
    ipyllm.SettingError, ipyllm.InvalidInputError
        Before anything is sent: data that is not rows, an empty template or one naming a field the data does
        not have, an invalid schema, a bad argument, an unknown keyword (named with its close match).
    """
    import asyncio

    _check_errors(errors)
    run = _Run(session, template, data, concurrency, schema, resume, overrides, processes, missing, "map")
    if dry_run:
        estimated = _estimate(run)
        run.finish_quietly()
        return estimated
    display = progress_display(progress, run.tally)
    job = _loop.submit(run.run())
    try:
        while not job.finished.wait(INTERVAL):
            display.update(run.tally)
    except KeyboardInterrupt:
        # Cancelling the batch cancels the calls in flight; their rows say interrupted.
        job.cancel()
        job.finished.wait()
        raise _interrupted(run, display) from None
    _close(run, display)
    try:
        job.result()
    except asyncio.CancelledError:
        pass
    _report(run, errors)
    return run.batch.result


def _close(run: _Run, display: Display) -> Batch:
    batch = run.finish()
    display.update(run.tally)
    display.close(batch.summary)
    return batch


def _interrupted(run: _Run, display: Display) -> BatchInterrupted:
    return BatchInterrupted(_close(run, display))


async def amap(
    session: Session,
    template: str | Callable[[Any], Any],
    data: Any,
    *,
    concurrency: int = 8,
    schema: Any = None,
    errors: str = "keep",
    resume: bool = True,
    progress: bool = True,
    processes: int = 1,
    missing: str = "skip",
    **overrides: Any,
) -> Any:
    """``map`` as a coroutine (``await ipyllm.amap(...)``): the caller's loop keeps running; same arguments and result.

    Cancelling it cancels the calls in flight (the task ends cancelled; ``last_batch()`` holds the partial
    result); Ctrl-C raises ``BatchInterrupted`` as ``map`` does.
    """
    import asyncio

    _check_errors(errors)
    run = _Run(session, template, data, concurrency, schema, resume, overrides, processes, missing, "amap")
    display = progress_display(progress, run.tally)
    job = _loop.submit(run.run())
    try:
        while not await job.wait(INTERVAL):
            display.update(run.tally)
    except (asyncio.CancelledError, KeyboardInterrupt) as stop:
        job.cancel()
        while not job.finished.is_set():
            await asyncio.sleep(0.01)
        interrupted = _interrupted(run, display)
        if isinstance(stop, asyncio.CancelledError):
            raise  # a cancelled task ends cancelled, as asyncio expects; the partial result is in last_batch()
        raise interrupted from None
    _close(run, display)
    try:
        job.result()
    except asyncio.CancelledError:
        pass
    _report(run, errors)
    return run.batch.result
