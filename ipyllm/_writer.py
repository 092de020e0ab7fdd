"""A batch's ledger writes, off its event loop, in order, many rows to a commit."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any

from ipyllm._records import Records
from ipyllm._usage import UsageRow

__all__ = ["Writer"]


class Writer:
    """A batch's ledger writes, off the event loop and in order: a committed insert can block its thread for a
    millisecond or more on a busy disk, time in which no other call of the batch would progress. What has
    piled up since the last commit goes in the next one, rows and cache entries together.

    Used only when no spending limit is set: with a limit, a row must be filed before its hold ends (the
    budgets' invariant), so rows are then written as the calls end, on the loop. ``close()`` waits until every
    row is written, so that the ledger is complete when ``map`` returns.
    """

    #: How often the writer looks for rows (seconds): one commit for what piled up meanwhile, and no wake-up per row
    #: (a commit per row took a fifth of the loop's time in GIL and CPU); a row is on disk about this long after its
    #: call ended, and ``close()`` does not wait for it.
    GATHER = 0.05

    def __init__(self, records: Records, name: str) -> None:
        self.records = records
        # Appended on the loop, taken here: a deque's append and popleft are atomic, and wake no thread.
        self._waiting: collections.deque[tuple[UsageRow | None, Any]] = collections.deque()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"ipyllm-ledger-{name}", daemon=True)
        self._thread.start()

    def row(self, row: UsageRow) -> None:
        self._waiting.append((row, None))

    def cache(self, key: str, kind: str, model: str, value: dict[str, Any]) -> None:
        self._waiting.append((None, (key, kind, model, value)))

    def _work(self) -> None:
        done = False
        while not done:
            done = self._closing.wait(self.GATHER)
            while self._waiting:
                items: list[tuple[UsageRow | None, Any]] = []
                with contextlib.suppress(IndexError):
                    while len(items) < 1000:
                        items.append(self._waiting.popleft())
                rows = [item[0] for item in items if item[0] is not None]
                entries = [item[1] for item in items if item[0] is None]
                try:
                    self.records.record_many(rows, entries)
                except Exception as error:  # a broken ledger is reported by the records; anything else is said once here
                    self.records.warn_once(f"batch-writer:{type(error).__name__}", f"a usage row could not be written ({error})")

    def close(self) -> None:
        """Write what waits, and end the writer."""
        self._closing.set()
        self._thread.join()
