"""A SQLite ledger's records of provider batches and map claims (``SQLiteStore``'s part of ``_batchledger`` and
``_batchclaim``). Collecting a batch (its rows, cache entries and the hold's end) and claiming a map are one
``BEGIN IMMEDIATE`` transaction each, so that of kernels sharing the file and doing it at once, one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipyllm._batchclaim import DELETE_CLAIM, INSERT_CLAIM, SELECT_CLAIM, Claim, claim_of, claim_values, is_stale
from ipyllm._batchledger import CLAIM_BATCH, INSERT_BATCH, SELECT_BATCHES, UPDATE_BATCH, BatchRecord, batch_values, record_of, update_values
from ipyllm._sqlschema import apply, new_uid
from ipyllm._store import CacheEntry, process_alive
from ipyllm._usage import UsageRow, micros, row_values, utc_now

if TYPE_CHECKING:
    import sqlite3
    from contextlib import AbstractContextManager

__all__ = ["FileBatches"]


class FileBatches:
    """Provider batches and map claims in the ledger file: mixed into ``SQLiteStore``, whose transactions and
    queries it uses."""

    if TYPE_CHECKING:

        def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _run(self, sql: str, parameters: Sequence[Any] = (), retry_now: bool = False) -> list[tuple[Any, ...]]: ...

    def batch_add(self, record: BatchRecord) -> None:
        with self._transaction() as connection:
            connection.execute(INSERT_BATCH, batch_values(record))

    def batch_update(self, record: BatchRecord) -> None:
        with self._transaction() as connection:
            connection.execute(UPDATE_BATCH, update_values(record))

    def batches(self, map_key: str | None = None, batch_id: str | None = None) -> list[BatchRecord]:
        rows = self._run(
            f"{SELECT_BATCHES} WHERE (? IS NULL OR map_key = ?) AND (? IS NULL OR id = ?) ORDER BY submitted_us, part",
            [map_key, map_key, batch_id, batch_id],
            retry_now=True,
        )
        return [record_of(row) for row in rows]

    def batch_collect(
        self, batch_id: str, rows: Sequence[UsageRow], entries: Sequence[CacheEntry], release: str | None, status: str = "collected"
    ) -> bool:
        """One ``BEGIN IMMEDIATE`` transaction: the batch claimed, its rows, cache entries and the hold's end; or nothing."""
        now = micros(utc_now())
        with self._transaction() as connection:
            if connection.execute(CLAIM_BATCH, [status, now, batch_id]).rowcount == 0:
                connection.execute("ROLLBACK")
                return False
            cached = [(key, now, kind, model, payload) for key, kind, model, payload in entries]
            apply(connection, [(new_uid(), None, row_values(row)) for row in rows], cached)
            if release is not None:
                connection.execute("DELETE FROM holds WHERE id = ?", [release])
        return True

    def batch_claim(self, claim: Claim) -> Claim | None:
        """One ``BEGIN IMMEDIATE`` transaction: kernels sharing the file claim one at a time, so one of them gets it."""
        with self._transaction() as connection:
            row = connection.execute(SELECT_CLAIM, [claim.map_key]).fetchone()
            if row is not None:
                holder = claim_of(row)
                if not is_stale(holder, claim.host, process_alive):
                    return holder
                connection.execute(DELETE_CLAIM, [holder.id])
            connection.execute(INSERT_CLAIM, claim_values(claim))
        return None

    def batch_unclaim(self, claim: Claim) -> None:
        with self._transaction() as connection:
            connection.execute(DELETE_CLAIM, [claim.id])
