"""``ipyllm.map``: one call per row of a DataFrame, Series or list, concurrent, rate-limit aware, budgeted, resumable.

The rows are prepared in the calling thread (``_rows``: a template that does not fit fails before anything is
sent) and sent on ipyllm's event loop (``_batchrun``): a fixed number of workers, the session's retry policy
per call, one usage row per call (``source`` ``map``, ``batch`` the batch's id). This module holds the entry
points: the arguments checked, the progress drawn while the batch runs, and the lines said after it.

- **Rate limits slow the whole batch** (``_pace``). A 429 pauses new attempts of every worker until its wait is
  over and halves the number of calls in flight; each success adds back a little.
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

from collections.abc import Callable
from typing import Any

from ipyllm import _loop
from ipyllm._batchcost import batch_price
from ipyllm._batchdata import Batch
from ipyllm._batchjob import MapJob
from ipyllm._batchrun import Run
from ipyllm._budget import usd
from ipyllm._helpers import start_for
from ipyllm._notices import notice
from ipyllm._progress import INTERVAL, Display, progress_display
from ipyllm._provider_batch import ProviderBatch
from ipyllm._routes import BatchEstimate
from ipyllm._rows import Rows
from ipyllm._session import Session
from ipyllm.errors import BatchError, BatchInterrupted, SettingError

# asyncio is imported when a batch runs, so that ``import ipyllm`` stays fast.

__all__ = ["Batch", "BatchEstimate", "amap", "map"]


def _report(run: Run, errors: str) -> None:
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


def _check_via(via: str, wait: bool) -> None:
    if via not in ("live", "batch"):
        raise SettingError(
            f"via must be 'live' (a call per row, now) or 'batch' (the provider's Batch API, about half price), not {via!r}", "via"
        )
    if not wait and via != "batch":
        raise SettingError("wait=False goes with via='batch': a live map returns when its rows are answered", "wait")


def _batch_report(handle: ProviderBatch, errors: str) -> Any:
    """The lines said after a map via the Batch API (how its rows were priced, missing values, failures); its result."""
    assert handle.rows is not None
    batch = handle.rows.batch
    settings, provider = handle.link.settings, handle.link.provider
    priced = batch_price(settings, settings.model, provider, 1, 1)
    if handle.parts and priced.basis != "batch":
        notice(f"batch rows of {settings.model} are priced at {priced.note}")
    if (missing := batch.missing_message()) is not None:
        notice(missing)
    message = batch.failure_message()
    if message is not None:
        if errors == "raise":
            raise BatchError(message, batch)
        notice(message)
    return batch.result


def _start_helpers(session: Session, processes: int) -> None:
    """The helper processes a batch will use, started before anything else: each imports litellm (seconds), which
    then overlaps this process's own work (its litellm import in a fresh kernel, the rows' preparation) rather than
    following it; until a helper is ready, its share of the calls runs here."""
    if session.client._acompletion is None:
        start_for(processes)


def _processes(session: Session, processes: int | None) -> int:
    """The processes a map runs in: its own argument, else the ``processes`` setting."""
    return session.config.snapshot().processes if processes is None else _whole("processes", processes)


def _check_errors(errors: str) -> None:
    if errors not in ("keep", "raise"):
        raise SettingError(f"errors must be 'keep' or 'raise' (got {errors!r})", "errors")


def _whole(name: str, value: Any) -> int:
    """A whole number of at least 1 (``True`` is not 4 calls in flight, nor 1)."""
    import numbers

    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise SettingError(f"{name} must be a whole number of at least 1 (got {value!r})", name)
    return int(value)


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
    processes: int | None = None,
    missing: str = "skip",
    via: str = "live",
    wait: bool = True,
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
        process drives about 250 calls a second (litellm spends 3-4 ms of CPU per call); worth it only when
        the provider allows more, with a core free for each helper. Retries, rate-limit pauses, budgets and
        the ledger stay in this process. Unset: the ``processes`` setting (1 unless ``LLM_PROCESSES`` says
        otherwise), whose helpers ``%load_ext`` starts at once.
    missing
        ``"skip"`` (the default): a row whose template fields hold a missing value (``None``, ``NaN``, ``pd.NA``,
        ``NaT``) is not sent; its result is NA, its reason in ``ipyllm.last_batch().errors`` is ``missing value in
        {field}``, and one line after the batch counts such rows (they are not failures). ``"send"``: they are
        sent, the value as text (``None``, ``nan``, ``<NA>``). A callable template gets every row and handles its
        own missing values.
    via
        ``"live"`` (the default): a call per row, now. ``"batch"``: the rows go through the provider's Batch API
        (about half price, results within its 24-hour window), one request file of what the live calls would send;
        running the same map again, in any kernel on the same ledger, attaches to the batch instead of sending it
        again, and takes its results once it has ended.
    wait
        With ``via="batch"``: False returns at once with the batch's handle (``.wait()``, ``.result()``, ``.cancel()``).
    **overrides
        As in ``complete``: ``model``, ``temperature``, ``max_tokens``, ``system``, extra litellm arguments.

    Returns
    -------
    pandas.Series or pandas.DataFrame
        Same index and order as ``data``; ``ipyllm.last_batch()`` has the per-row errors and usage. With
        ``via="batch", wait=False``: the provider batch's handle.

    Raises
    ------
    BatchInterrupted
        On Ctrl-C, after cancelling the calls in flight; ``.result`` is the partial result.
    BatchDetached
        On Ctrl-C while waiting for a provider batch: the batch goes on (run the same map again to attach to it).
    ipyllm.SettingError, ipyllm.InvalidInputError
        Before anything is sent: data that is not rows, an empty template or one naming a field the data does
        not have, an invalid schema, a bad argument, an unknown keyword (named with its close match).
    """
    import asyncio

    _check_errors(errors)
    _check_via(via, wait)
    concurrency, processes = _whole("concurrency", concurrency), _processes(session, processes)
    if not dry_run and via == "live":
        _start_helpers(session, processes)
    rows = Rows(session, template, data, schema, overrides, missing, "map", helpers=processes > 1 and via == "live" and not dry_run)
    if dry_run:
        return rows.estimate(concurrency)
    if via == "batch":
        handle = MapJob(session, rows, resume).start()
        if not wait:
            return handle
        return _batch_report(handle.wait(progress), errors)
    run = Run(session, rows, concurrency, processes, resume)
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


def _close(run: Run, display: Display) -> Batch:
    batch = run.finish()
    display.update(run.tally)
    display.close(batch.summary)
    return batch


def _interrupted(run: Run, display: Display) -> BatchInterrupted:
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
    processes: int | None = None,
    missing: str = "skip",
    via: str = "live",
    wait: bool = True,
    **overrides: Any,
) -> Any:
    """``map`` as a coroutine (``await ipyllm.amap(...)``): the caller's loop keeps running; same arguments and result.

    Cancelling it cancels the calls in flight (the task ends cancelled; ``last_batch()`` holds the partial
    result); Ctrl-C raises ``BatchInterrupted`` as ``map`` does.
    """
    import asyncio

    _check_errors(errors)
    _check_via(via, wait)
    concurrency, processes = _whole("concurrency", concurrency), _processes(session, processes)
    if via == "batch":
        batch_job = MapJob(session, Rows(session, template, data, schema, overrides, missing, "amap"), resume)
        handle = await asyncio.to_thread(batch_job.start)
        if not wait:
            return handle
        try:
            await asyncio.to_thread(handle.wait, progress)
        except asyncio.CancelledError:
            handle.stopping = True  # the waiting thread stops at its next look; the batch goes on
            raise
        return _batch_report(handle, errors)
    _start_helpers(session, processes)
    rows = Rows(session, template, data, schema, overrides, missing, "amap", helpers=processes > 1)
    run = Run(session, rows, concurrency, processes, resume)
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
