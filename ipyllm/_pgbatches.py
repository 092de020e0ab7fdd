"""A PostgreSQL ledger's records of provider batches and map claims (``PostgresStore``'s part of ``_batchledger`` and
``_batchclaim``): on the server itself, as a batch's record is no use in one kernel's spool. Collecting a batch (its
rows, cache entries and the hold's end) and claiming a map are one transaction each, so that of kernels doing it at
once, on any machine, one does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipyllm._batchclaim import DELETE_CLAIM, INSERT_CLAIM, SELECT_CLAIM, Claim, claim_of, claim_values, is_stale
from ipyllm._batchledger import (
    CLAIM_BATCH,
    INSERT_BATCH,
    SELECT_BATCHES,
    UPDATE_BATCH,
    BatchRecord,
    batch_values,
    postgres,
    record_of,
    update_values,
)
from ipyllm._pglink import driver_errors
from ipyllm._pgschema import insert_rows
from ipyllm._store import CacheEntry, process_alive
from ipyllm._usage import UsageRow, micros, row_values, utc_now

if TYPE_CHECKING:
    import threading

    from ipyllm._pgbudget import TeamBudgets
    from ipyllm._pglink import ServerLink
    from ipyllm.errors import LedgerUnavailableError

__all__ = ["ServerBatches"]


class ServerBatches:
    """Provider batches and map claims on the server: mixed into ``PostgresStore``, whose link, lock, holds and
    queries it uses."""

    link: ServerLink
    budgets: TeamBudgets
    _lock: threading.RLock

    if TYPE_CHECKING:

        def _query(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]] | None: ...

        def _unreachable(self, what: str) -> LedgerUnavailableError: ...

    def _batch_write(self, what: str, statement: str, parameters: Sequence[Any]) -> None:
        if self._query(f"{statement} RETURNING id", parameters) is None and self.link.away:
            raise self._unreachable(what)

    def batch_add(self, record: BatchRecord) -> None:
        self._batch_write("the batch is not recorded", postgres(INSERT_BATCH), batch_values(record))

    def batch_update(self, record: BatchRecord) -> None:
        self._batch_write("the batch's status is not recorded", postgres(UPDATE_BATCH), update_values(record))

    def batches(self, map_key: str | None = None, batch_id: str | None = None) -> list[BatchRecord]:
        rows = self._query(
            f"{postgres(SELECT_BATCHES)} WHERE (%s::text IS NULL OR map_key = %s) AND (%s::text IS NULL OR id = %s)"
            " ORDER BY submitted_us, part",
            [map_key, map_key, batch_id, batch_id],
        )
        if rows is None:
            raise self._unreachable("the recorded batches are not known")
        return [record_of(row) for row in rows]

    def batch_collect(
        self, batch_id: str, rows: Sequence[UsageRow], entries: Sequence[CacheEntry], release: str | None, status: str = "collected"
    ) -> bool:
        """One transaction on the server: the batch claimed, its rows, cache entries and the hold's end; or nothing."""
        now = micros(utc_now())
        with self._lock:
            connection = self.link.usable()
            if connection is None:
                raise self._unreachable("the batch's results are taken when it is back")
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.execute(f"{postgres(CLAIM_BATCH)} RETURNING id", [status, now, batch_id])
                    if cursor.fetchone() is None:
                        return False
                    # Many rows to a statement: the running totals are added once per statement (``_totals``).
                    for start in range(0, len(rows), 500):
                        chunk = [[uuid.uuid4().hex, *row_values(row)] for row in rows[start : start + 500]]
                        cursor.execute(insert_rows(len(chunk)), [value for values in chunk for value in values])
                    cursor.executemany(
                        "INSERT INTO cache (key, created_us, kind, model, payload) VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET created_us = EXCLUDED.created_us, payload = EXCLUDED.payload",
                        [(key, now, kind, model, payload) for key, kind, model, payload in entries],
                    )
                    if release is not None:
                        cursor.execute("DELETE FROM holds WHERE id = %s", [release])
            except driver_errors() as error:
                self.link.lost(error)
                raise self._unreachable("the batch's results are taken when it is back") from None
            if release is not None:
                self.budgets.released(release)
        return True

    def batch_claim(self, claim: Claim) -> Claim | None:
        """One transaction on the server: a stale claim ended by its id, then ours inserted unless the map's key is
        taken (``ON CONFLICT DO NOTHING``): of kernels claiming at once, on any machine, one gets it."""
        with self._lock:
            connection = self.link.usable()
            if connection is None:
                raise self._unreachable("the map is claimed in this kernel only")
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.execute(postgres(SELECT_CLAIM), [claim.map_key])
                    row = cursor.fetchone()
                    if row is not None:
                        holder = claim_of(row)
                        if not is_stale(holder, claim.host, process_alive):
                            return holder
                        cursor.execute(postgres(DELETE_CLAIM), [holder.id])
                    cursor.execute(f"{postgres(INSERT_CLAIM)} ON CONFLICT (map_key) DO NOTHING RETURNING id", claim_values(claim))
                    if cursor.fetchone() is not None:
                        return None
                    cursor.execute(postgres(SELECT_CLAIM), [claim.map_key])
                    taken = cursor.fetchone()
            except driver_errors() as error:
                self.link.lost(error)
                raise self._unreachable("the map is claimed in this kernel only") from None
        return claim_of(taken) if taken is not None else claim

    def batch_unclaim(self, claim: Claim) -> None:
        self._batch_write("the map's claim is left to go stale", postgres(DELETE_CLAIM), [claim.id])
