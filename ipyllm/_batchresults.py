"""A provider batch's results, as rows: each line of its output and error files one usage row (``tier`` ``batch``,
the provider's tokens, ``cost_usd`` at the batch price: ``_batchcost.BatchPricer``), its answer a cache entry, and a
line that failed, or never ran (expiry, cancellation), that row's error saying how to send it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone

from ipyllm._batchcost import BatchPricer
from ipyllm._batchledger import BatchRecord
from ipyllm._calls import answer_entry
from ipyllm._config import Settings
from ipyllm._cost import cache_creation_tokens, cached_tokens
from ipyllm._engine import Reply
from ipyllm._jobfile import LineResult
from ipyllm._records import CacheWrite
from ipyllm._schema import Schema
from ipyllm._usage import UsageRow
from ipyllm.errors import InvalidOutputError

__all__ = ["AGAIN", "result_rows"]

_NEVER_RAN = {
    "expired": "BatchExpired: provider batch {id} expired (its 24 h window ended) before this row ran",
    "cancelled": "BatchCancelled: provider batch {id} was cancelled before this row ran",
    "failed": "BatchFailed: provider batch {id} failed{why}",
    "lost": "BatchLost: the provider no longer knows batch {id}",
    "completed": "BatchError: provider batch {id} completed without a result for this row",
}
#: How a row without an answer says it can be sent again.
AGAIN = "; run the same map again to send it"


def result_rows(
    stamp: Callable[[UsageRow], UsageRow],
    settings: Settings,
    part: BatchRecord,
    lines: dict[str, LineResult],
    reason: str,
    shape: Schema | None,
) -> tuple[list[UsageRow], list[CacheWrite], dict[str, tuple[Reply | None, str | None]]]:
    """A part's results: each key's usage row (stamped), its cache entry, and its answer (a reply, or why there is
    none). ``reason``: why the provider failed the batch, when it did; ``shape``: the map's schema."""
    ended = part.ended or datetime.now(timezone.utc)
    latency = max(0.0, (ended - part.submitted).total_seconds())
    rows: list[UsageRow] = []
    entries: list[CacheWrite] = []
    answers: dict[str, tuple[Reply | None, str | None]] = {}
    pricer = BatchPricer(settings, part.model, part.provider)
    for key in part.keys:
        line = lines.get(key)
        row = stamp(UsageRow(timestamp=part.submitted, kind="chat", model=part.model, provider=part.provider, tier="batch"))
        row.latency_s = latency
        if line is not None and line.error is None:
            _priced(row, line, pricer)
            reply = Reply(line.text, row)
            reply.finish_reason = line.finish_reason
            answers[key] = (reply, None)
            if _keep(line, part, shape):
                entries.append((key, "chat", part.model, answer_entry(line.text, row)))
        else:
            why = _why(part, line, reason)
            row.status, row.error, row.cost_usd, row.attempts = "error", why, 0.0, 0 if line is None else 1
            answers[key] = (None, why)
        rows.append(row)
    return rows, entries, answers


def _why(part: BatchRecord, line: LineResult | None, reason: str) -> str:
    """A row's error: its line's failure, or why it never ran, and how to send it again."""
    if line is not None and line.error is not None and not line.error.startswith(("batch_expired", "batch_cancelled")):
        return f"BatchLineError: {line.error}{AGAIN}"
    status = part.status if part.status in _NEVER_RAN else "completed"
    if line is not None and line.error is not None:
        status = "expired" if line.error.startswith("batch_expired") else "cancelled"
    return _NEVER_RAN[status].format(id=part.id, why=reason) + AGAIN


def _priced(row: UsageRow, line: LineResult, pricer: BatchPricer) -> None:
    """The row's tokens as the provider reported them, and their cost at the batch price (``pricer``: the part's model's)."""
    prompt, completion = line.tokens()
    usage = line.usage
    row.prompt_tokens, row.completion_tokens = prompt, completion
    row.total_tokens = None if prompt is None else prompt + (completion or 0)
    row.cached_tokens, row.cache_creation_tokens = cached_tokens(usage), cache_creation_tokens(usage)
    row.attempts = 1
    row.cost_usd = pricer(prompt, completion or 0, usage) if prompt is not None else math.nan


def _keep(line: LineResult, part: BatchRecord, shape: Schema | None) -> bool:
    """Whether the answer goes into the cache: not an empty one, one a budget's cap cut short, or one that does not fit
    the schema (as live map keeps them)."""
    if not line.text or (part.output_cap is not None and line.finish_reason == "length"):
        return False
    if shape is not None:
        try:
            shape.parse(line.text)
        except InvalidOutputError:
            return False
    return True
