"""A provider batch once sent: waited for, its results taken into the ledger once, cancelled; ``ipyllm.batch(id)``.

``ProviderBatch`` is the handle ``map(via="batch", wait=False)`` and ``ipyllm.batch(id)`` return. It looks at the
batch with a growing interval (``batch_poll_min_wait`` growing by half at each look, up to ``batch_poll_max_wait``),
through the session's retry policy; the progress is live map's display, showing the provider's status, request
counts and the time elapsed. Ctrl-C stops the waiting, not the batch (``BatchDetached``, one line).

When the batch has ended (completed, expired, cancelled, failed), its output and error files are read and each line
becomes one usage row (``tier`` ``batch``, the provider's tokens, ``cost_usd`` at the batch price: ``_batchresults``)
and its answer a cache entry (live map's entry, so a later map, live or batch, is answered from it). The rows, the
entries, the end of the budget hold and the status ``collected`` are written in one ledger transaction: a second
kernel that comes to take them finds them taken, and answers its rows from the cache instead. A line that failed,
or never ran (expiry, cancellation), is that row's ``error`` row; the rows that did finish are kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from ipyllm import _litellm
from ipyllm._batchdata import Batch
from ipyllm._batchledger import ENDED, BatchRecord
from ipyllm._batchlink import BatchGoneError, BatchLink
from ipyllm._batchresults import AGAIN, result_rows
from ipyllm._calls import Prepared
from ipyllm._engine import Reply
from ipyllm._jobfile import LineResult, parse_results
from ipyllm._progress import Tally, progress_display
from ipyllm._schema import Schema
from ipyllm._session import Session
from ipyllm.errors import BatchDetached

__all__ = ["MapRows", "ProviderBatch", "pause"]


def pause(seconds: float) -> None:
    """How the waiting sleeps between two looks (tests put a recorder, or a Ctrl-C, in its place)."""
    time.sleep(seconds)


#: The provider's statuses, least advanced first.
_ORDER = ("validating", "in_progress", "finalizing", "cancelling", "completed", "expired", "cancelled", "failed", "lost", "collected")


@dataclass
class MapRows:
    """What a map knows of its rows that a handle from ``ipyllm.batch(id)`` does not: each key's positions in the
    input, each key's prepared call (for a cached answer's row), the schema, and the map's result."""

    batch: Batch
    positions: dict[str, list[int]]
    calls: dict[str, Prepared]
    shape: Schema | None = None


@dataclass
class ProviderBatch:
    """A map's batches at the provider (one per request file): ``.wait()``, ``.result()``, ``.cancel()``, ``.status``.

    Its repr says where the batch is; ``ipyllm.batches()`` lists every one recorded in the ledger.
    """

    session: Session
    link: BatchLink
    parts: list[BatchRecord]
    rows: MapRows | None = None
    #: Why the provider failed a batch (its validation errors), by batch id.
    reasons: dict[str, str] = field(default_factory=dict)
    collected: bool = False
    summary: str = ""
    #: Set to stop a wait running in another thread (a cancelled ``amap``): it stops at its next look.
    stopping: bool = False

    # -- what the user sees -------------------------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return [part.id for part in self.parts]

    @property
    def id(self) -> str | None:
        return self.parts[0].id if self.parts else None

    @property
    def status(self) -> str:
        """The provider's status (the least advanced of the parts'), or ``collected`` once the results are taken."""
        if self.collected or not self.parts:
            return "collected"
        return min((part.status for part in self.parts), key=lambda status: _ORDER.index(status) if status in _ORDER else 0)

    def counts(self) -> tuple[int, int, int]:
        """Rows done, failed, and in all, as the provider counts them."""
        return (
            sum(part.completed for part in self.parts),
            sum(part.failed for part in self.parts),
            sum(part.total or len(part.keys) for part in self.parts),
        )

    def __repr__(self) -> str:
        return _describe(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    # -- looking at the provider ---------------------------------------------------------------------------------------
    def refresh(self) -> ProviderBatch:
        """Ask the provider where each part not yet ended is, and record it in the ledger."""
        for position, part in enumerate(self.parts):
            if part.status in ENDED or part.done:
                continue
            try:
                seen = self.link.call(f"looking at batch {part.id}", _litellm.retrieve_batch, part.id)
            except BatchGoneError:
                self.parts[position] = replace(part, status="lost", ended=datetime.now(timezone.utc))
                continue
            self.parts[position] = updated = _updated(part, seen)
            if updated.status == "failed":
                self.reasons[part.id] = _errors(seen)
            self.session.records.batch_update(updated)
        return self

    @property
    def ended(self) -> bool:
        return all(part.status in ENDED or part.status == "lost" or part.done for part in self.parts)

    def wait(self, progress: bool = True) -> ProviderBatch:
        """Wait until every part has ended, then take the results (once, whichever kernel comes first); Ctrl-C stops
        the waiting (``BatchDetached``), not the batch."""
        settings = self.link.settings
        tally = Tally(self.counts()[2])
        display = progress_display(progress and not self.collected, tally)
        wait = settings.batch_poll_min_wait
        try:
            while not self.collected:
                self.refresh()
                self._show(tally)
                display.update(tally)
                if self.ended:
                    break
                deadline = time.monotonic() + wait
                while (left := deadline - time.monotonic()) > 0:
                    if self.stopping:
                        raise KeyboardInterrupt
                    pause(min(left, 0.5))
                    display.update(tally)
                wait = min(settings.batch_poll_max_wait, max(wait * 1.5, 0.001))
            self.collect()
        except KeyboardInterrupt:
            display.close(tally.line() if tally.stage else "")
            raise BatchDetached(self.detached_message(), self) from None
        display.close(self.summary)
        return self

    def detached_message(self) -> str:
        return _detached(self)

    def _show(self, tally: Tally) -> None:
        done, failed, total = self.counts()
        tally.total, tally.answered, tally.failed, tally.stage = total, done, failed, self.status

    def result(self, progress: bool = True) -> Any:
        """The map's result, aligned to its input, once the batch has ended (waiting for it as ``wait`` does). From
        ``ipyllm.batch(id)``, without the map's data: a Series indexed by the rows' cache keys."""
        self.wait(progress)
        assert self.rows is not None
        return self.rows.batch.result

    def cancel(self) -> ProviderBatch:
        """Ask the provider to cancel every part still running; the rows that finished are kept when the results are
        taken (``wait()``), the others are NA with an error saying so."""
        self.refresh()
        for position, part in enumerate(self.parts):
            if part.status in ENDED or part.done or part.status in ("cancelling", "lost"):
                continue
            seen = self.link.call(f"cancelling batch {part.id}", _litellm.cancel_batch, part.id)
            self.parts[position] = updated = _updated(part, seen)
            self.session.records.batch_update(updated)
        return self

    # -- taking the results ---------------------------------------------------------------------------------------------
    def collect(self) -> None:
        """Read each ended part's files and take its results (rows, cache entries, the hold's end) in one transaction;
        a part whose results another kernel took is answered from the cache. Then the map's result is built."""
        if self.rows is None:
            self.rows = _detached_rows(self.session, self.parts)
        batch = self.rows.batch
        for part in self.parts:
            self._collect_part(part)
        batch.provider_batches = tuple(self.ids)
        for position, error in enumerate(batch.row_errors):
            if error is None and batch.replies[position] is None:
                batch.failed(position, "BatchError: no result for this row" + AGAIN)
        batch.build_result()
        batch.summarize()
        named = ", ".join(self.ids) if self.parts else "(nothing sent)"
        self.summary = batch.summary = batch.summary.replace(f"ipyllm.map batch {batch.id}", f"ipyllm.map via provider batch {named}", 1)
        self.session.last_batch = batch
        self.collected = True

    def _collect_part(self, part: BatchRecord) -> None:
        records = self.session.records
        known = records.batches(batch_id=part.id)
        if known and known[0].done:  # another kernel (or an earlier run) took the results: they are in the cache
            self._from_cache(part, known[0])
            return
        lines: dict[str, LineResult] = {}
        if part.status != "lost":
            files = [
                self.link.call(f"reading the results of batch {part.id}", _litellm.file_content, file_id)
                for file_id in (part.output_file_id, part.error_file_id)
                if file_id
            ]
            lines = parse_results(*files)
        stamp = self.session.stamper("map", batch=part.id)
        shape = self.rows.shape if self.rows is not None else None
        rows, entries, answers = result_rows(stamp, self.link.settings, part, lines, self.reasons.get(part.id, ""), shape)
        release = part.hold_id if part.hold_id and self._last_of_hold(part) else None
        status = "lost" if part.status == "lost" else "collected"
        if not records.batch_collect(part, rows, entries, release, status):
            self._from_cache(part, part)
            return
        if release is not None:
            self.session.budgets.forget(release)
        mapped = self.rows
        if mapped is None:
            return
        for key, (reply, why) in answers.items():
            for position in mapped.positions.get(key, ()):
                if reply is not None:
                    mapped.batch.answered(position, reply)
                else:
                    mapped.batch.failed(position, why or "BatchError")
        mapped.batch.tally.spent += sum(row.cost_usd for row in rows if not math.isnan(row.cost_usd))

    def _last_of_hold(self, part: BatchRecord) -> bool:
        """Whether every other part sharing ``part``'s hold has had its results taken (the hold ends with the last)."""
        others = [p for p in self.session.records.batches(map_key=part.map_key) if p.hold_id == part.hold_id and p.id != part.id]
        return all(p.done for p in others)

    def _from_cache(self, part: BatchRecord, record: BatchRecord) -> None:
        """The part's rows when its results were taken before: answers from the cache (``cached`` rows), the others
        failed, as the ledger's rows of that batch say."""
        if self.rows is None:
            return
        hits = self.session.records.cache_get_many(list(part.keys))
        record_row = self.session.recorder("map", batch=record.id)
        for key in part.keys:
            call = self.rows.calls.get(key) or Prepared("chat", self.link.settings, [], {}, key, record_row, time.perf_counter())
            hit = hits.get(key)
            answer = call.from_cache(hit) if call is not None and hit is not None else None
            for position in self.rows.positions.get(key, ()):
                if isinstance(answer, Reply):
                    self.rows.batch.answered(position, answer)
                else:
                    self.rows.batch.failed(position, f"BatchError: no answer from provider batch {record.id} ({record.status}){AGAIN}")


# -- helpers ---------------------------------------------------------------------------------------------------------
def _updated(part: BatchRecord, seen: Any) -> BatchRecord:
    """The record with what the provider said of the batch."""
    counts = getattr(seen, "request_counts", None)
    status = str(getattr(seen, "status", part.status) or part.status)
    ended = part.ended
    if status in ENDED and ended is None:
        ended = datetime.now(timezone.utc)
    return replace(
        part,
        status=status,
        total=int(getattr(counts, "total", 0) or part.total or len(part.keys)),
        completed=int(getattr(counts, "completed", 0) or 0),
        failed=int(getattr(counts, "failed", 0) or 0),
        output_file_id=getattr(seen, "output_file_id", None) or part.output_file_id,
        error_file_id=getattr(seen, "error_file_id", None) or part.error_file_id,
        ended=ended,
    )


def _errors(seen: Any) -> str:
    errors = getattr(seen, "errors", None)
    data = getattr(errors, "data", None) or (errors.get("data") if isinstance(errors, dict) else None) or []
    first = data[0] if data else None
    message = getattr(first, "message", None) or (first.get("message") if isinstance(first, dict) else None)
    return f" ({message})" if message else ""


def _detached_rows(session: Session, parts: list[BatchRecord]) -> MapRows:
    """For ``ipyllm.batch(id)``, without the map's data: one row per key, indexed by the keys."""
    import pandas as pd

    keys = list(dict.fromkeys(key for part in parts for key in part.keys))
    batch = Batch(parts[0].id if parts else "none", pd.Index(keys, name="custom_id"), Tally(len(keys)), None, session)
    batch.replies, batch.parsed, batch.row_errors = [None] * len(keys), [None] * len(keys), [None] * len(keys)
    return MapRows(batch, {key: [position] for position, key in enumerate(keys)}, {})


def _describe(handle: ProviderBatch) -> str:
    """The handle's repr: where its batch is, how far, whose, since when."""
    if not handle.parts:
        return "<ipyllm provider batch: nothing to send, every row answered from the cache>"
    done, failed, total = handle.counts()
    first = handle.parts[0]
    ago = _clock(time.time() - first.submitted.timestamp())
    which = handle.ids[0] if len(handle.parts) == 1 else f"{handle.ids[0]} (+{len(handle.parts) - 1} more)"
    failures = f", {failed:,} failed" if failed else ""
    return (
        f"<ipyllm provider batch {which}: {handle.status} · {done + failed:,}/{total:,} done{failures} · "
        f"{first.provider} {first.model} · submitted {ago} ago>"
    )


def _detached(handle: ProviderBatch) -> str:
    """What Ctrl-C during a wait says: the batch goes on, and how to attach to it or cancel it."""
    done, failed, total = handle.counts()
    first = handle.parts[0] if handle.parts else None
    where = first.provider if first else "the provider"
    cancel = f"ipyllm.batch({handle.id!r}).cancel()"
    return (
        f"stopped waiting for provider batch {', '.join(handle.ids)} ({handle.status}, {done + failed:,}/{total:,} done): "
        f"it goes on at {where}; run the same map again to attach to it, or {cancel} to cancel it"
    )


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
