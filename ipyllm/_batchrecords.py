"""A session's records of provider batches and map claims (``Records``' part of ``_batchledger`` and
``_batchclaim``): in the ledger, and in memory when there is none or it cannot be used, so that a batch submitted
is never lost track of.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ipyllm._store import BatchRecord, Claim, MemoryLedger, Store
from ipyllm._usage import UsageRow

__all__ = ["BatchRecords", "CacheWrite"]

T = TypeVar("T")

#: A cache entry to write: key, kind, model, and the value (JSON-able).
CacheWrite = tuple[str, str, str, dict[str, Any]]


class BatchRecords:
    """Provider batches and map claims: mixed into ``Records``, whose ledger and memory they use."""

    memory: MemoryLedger

    if TYPE_CHECKING:

        def using_store(self, action: Callable[[Store], T]) -> T | None: ...

        def record_many(self, rows: list[UsageRow], entries: list[CacheWrite]) -> None: ...

    def _on_store(self, action: Callable[[Store], T]) -> tuple[bool, T | None]:
        """``action`` on the ledger: (True, its result); (False, None) when there is none, or it cannot be used."""
        done: list[T] = []
        self.using_store(lambda store: done.append(action(store)))
        return (True, done[0]) if done else (False, None)

    def batch_add(self, record: BatchRecord) -> None:
        """Record a submitted batch in the ledger (in memory only, when there is none)."""
        if not self._on_store(lambda store: store.batch_add(record))[0]:
            self.memory.batch_add(record)

    def batch_update(self, record: BatchRecord) -> None:
        if not self._on_store(lambda store: store.batch_update(record))[0]:
            self.memory.batch_update(record)

    def batches(self, map_key: str | None = None, batch_id: str | None = None) -> list[BatchRecord]:
        """The recorded batches (of one map, or the one with that id): the ledger's, and this session's in memory."""
        _, records = self._on_store(lambda store: store.batches(map_key, batch_id))
        known = {record.id for record in records or ()}
        return [*(records or ()), *(r for r in self.memory.batches(map_key, batch_id) if r.id not in known)]

    def batch_claim(self, claim: Claim) -> Claim | None:
        """Claim sending a map's batches (in the ledger; in memory when there is none, or it cannot be used): None
        when this session has it, else the claim holding it."""
        found, holder = self._on_store(lambda store: store.batch_claim(claim))
        return holder if found else self.memory.batch_claim(claim)

    def batch_unclaim(self, claim: Claim) -> None:
        self.memory.batch_unclaim(claim)
        self._on_store(lambda store: store.batch_unclaim(claim))

    def batch_collect(
        self, record: BatchRecord, rows: list[UsageRow], entries: list[CacheWrite], release: str | None, status: str = "collected"
    ) -> bool:
        """Take a batch's results once (its rows, cache entries, the hold's end and its status, together); False when
        they were already taken, by this kernel or another (nothing is written then)."""
        cached = [(key, kind, model, json.dumps(value)) for key, kind, model, value in entries]
        if any(r.id == record.id for r in self.memory.batches(batch_id=record.id)):
            if self.memory.batch_collect(record.id, status):
                self.record_many(rows, entries)
                return True
            return False
        found, taken = self._on_store(lambda store: store.batch_collect(record.id, rows, cached, release, status))
        if not found:  # the ledger cannot be written now: the rows wait in memory (and the ledger's spool)
            self.record_many(rows, entries)
            return True
        if taken:
            for row in rows:
                self.memory.append(row)
        return bool(taken)
