"""The usage frames a store has read, kept and extended, so that reading a ledger's frame again reads only the rows
added since (``ipyllm.usage(all_sessions=True)`` of 100,000 rows in a few tens of ms instead of a second).

Ledger rows are only appended, with increasing ids, and each has a random ``uid``. A frame read is remembered with
its ``Mark``: the highest id then, how many rows had an id up to it, and that row's uid. The next read of the same
rows (the same window's SQL and parameters, the same columns) first checks, in one query, that the ledger still has
as many rows up to that id and the same row at it, then reads only the rows above it and adds them, re-sorting by
(time, id) only when they do not all come after the rows held. The check catches a ledger file deleted and made
again (other uids), and a PostgreSQL row committed after rows with higher ids (one more row up to the mark): the
frame is then read whole again.

The frame of the whole ledger (every column, no filter but a session left out) is also kept on disk
(``_framefile``), so a fresh kernel checks and extends it instead of reading every row; the session left out is
taken away in pandas. It is rewritten (by a thread of its own, so the read does not wait) when it was not there or
did not check out, and when the rows added since it was written are more than a twentieth of it. Where there is no
such file, a store whose rows are packed in chunks (``_framechunks``) reads the whole ledger's rows from those; the
cache also has its store pack them as it writes (``written``).

Every read hands out a copy the caller may change (under pandas' copy-on-write, a shallow one). Frames of more than
a million rows are not kept; of the windows read, the last four are.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from ipyllm import _framechunks, _framefile
from ipyllm._framechunks import CHECK_EVERY
from ipyllm._framefile import Mark, Snapshot
from ipyllm._usage import COLUMNS
from ipyllm._views import Window, run_query, selected_columns

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["FrameCache", "Source"]

#: Frames of more rows are read every time, not kept.
MAX_ROWS = 1_000_000
#: How many frames (windows and columns read) are kept.
MAX_FRAMES = 4
#: The frame file is rewritten once the rows added since it was written are more than this share of it.
REWRITE_SHARE = 0.05

# One statement, so one snapshot of the ledger: the highest id, the rows, those above the mark, the uid at the mark
# and at the highest id. Counting the rows above the mark (a step down the primary key) and the whole table (SQLite
# counts its smallest index) is cheaper than counting the rows up to the mark.
_STATE = (
    "SELECT (SELECT MAX(id) FROM usage), (SELECT COUNT(*) FROM usage), (SELECT COUNT(*) FROM usage WHERE id > ?),"
    " (SELECT uid FROM usage WHERE id = ?), (SELECT uid FROM usage ORDER BY id DESC LIMIT 1)"
)
_WHOLE = "the whole ledger"


class Source(Protocol):
    """What the cache needs of a store: its SQL dialect, one read-only query, and the rows of a ``WHERE`` clause."""

    dialect: str

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def frame_rows(self, where: str, parameters: Sequence[Any], names: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
        """The rows of ``where`` (a ``WHERE`` clause, ``?`` placeholders), ordered by time, then id: their ids and their
        frame of ``names``."""
        ...


class FrameCache:
    """One store's usage frames, kept and extended; safe to use from several threads.

    Parameters
    ----------
    source
        The store.
    identity
        The ledger's identity (``_framefile.identity_of``), naming its frame file; None to keep no file.
    chunks
        Whether the store packs its rows in chunks (``_framechunks``: ``source`` is ``Packable`` too).
    """

    def __init__(self, source: Source, identity: str | None, chunks: bool = False) -> None:
        self.source = source
        self.identity = identity
        self.chunks = chunks
        self._frames: OrderedDict[Any, Snapshot] = OrderedDict()
        #: How many rows the frame file held when this kernel last read or wrote it (None: no file known).
        self._filed: int | None = None
        self._lock = threading.Lock()
        #: Rows this store has written, and when it next looks for rows to pack.
        self._written, self._next_pack = 0, CHECK_EVERY
        #: The threads packing rows and writing the frame file (at most one of each at a time), and whether to stop.
        self._packer: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._closed = threading.Event()
        self._starting = threading.Lock()

    def written(self, rows: int = 1) -> None:
        """The store wrote ``rows`` rows: after every ``CHECK_EVERY``, a thread packs what is due (``_framechunks``)."""
        self._written += rows
        if self._written >= self._next_pack:
            self._next_pack = self._written + CHECK_EVERY
            self._pack()

    def close(self) -> None:
        """Stop packing (after the chunk being written) and wait for the frame file being written: the store closes."""
        self._closed.set()
        for thread in (self._packer, self._saver):
            if thread is not None:
                thread.join(10)

    def _pack(self) -> None:
        with self._starting:
            if not self.chunks or self._closed.is_set() or (self._packer is not None and self._packer.is_alive()):
                return
            self._packer = threading.Thread(
                target=_framechunks.packed_quietly, args=[self.source, self._closed.is_set], name="ipyllm-pack", daemon=True
            )
            self._packer.start()

    def frame(self, exclude_session: str | None = None, window: Window | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows (but ``exclude_session``'s; of ``window`` only, filtered in the database), oldest first, as the usage
        frame (of ``columns`` only, and the time): ``Store.frame``."""
        window = window or Window()
        names = selected_columns(columns)
        if names == list(COLUMNS) and replace(window, exclude_session=None) == Window():
            whole = self._read(_WHOLE, Window(), names)
            return _without(whole.frame, exclude_session or window.exclude_session)
        window = replace(window, exclude_session=exclude_session) if exclude_session else window
        where, parameters = window.sql()
        return _handed(self._read((where, tuple(parameters), tuple(names)), window, names).frame)

    def _read(self, key: Any, window: Window, names: list[str]) -> Snapshot:
        with self._lock:  # one read at a time: two threads would read the same new rows twice
            known = self._frames.get(key)
            if known is None and key == _WHOLE and self.identity is not None:
                known = _framefile.load(self.identity)
                self._filed = None if known is None else len(known.ids)
            top, total, above, uid_at_mark, uid_at_top = run_query(self.source, _STATE, [known.mark.top if known else 0] * 2)[0]
            mark = Mark(int(top or 0), int(total), uid_at_top)
            where, parameters = window.sql()
            if known is not None and int(total) - int(above) == known.mark.count and uid_at_mark == known.mark.uid:
                above = known.mark.top
                added = self._rows(where, parameters, names, above, mark.top, whole=key == _WHOLE) if mark.top > above else None
                snapshot = known if added is None else _extended(known, *added, mark)
            else:
                ids, frame = self._rows(where, parameters, names, 0, mark.top, whole=key == _WHOLE)
                snapshot = Snapshot(frame, ids, mark)
                if key == _WHOLE:
                    self._filed = None
            self._frames.pop(key, None)
            if len(snapshot.ids) <= MAX_ROWS:
                self._frames[key] = snapshot  # the latest read last: the first to go is the least recently read
                while len(self._frames) > MAX_FRAMES:
                    self._frames.popitem(last=False)
                if key == _WHOLE and self.identity is not None and _outgrown(self._filed, len(snapshot.ids)):
                    if self._saver is not None:
                        self._saver.join()
                    # Not a daemon: a process that ends meanwhile still leaves the file for the next one.
                    self._saver = threading.Thread(target=_framefile.save, args=[self.identity, snapshot], name="ipyllm-frame-file")
                    self._saver.start()
                    self._filed = len(snapshot.ids)
            return snapshot

    def _rows(
        self, where: str, parameters: list[Any], names: list[str], after: int, top: int, whole: bool = False
    ) -> tuple[np.ndarray, pd.DataFrame]:
        """The window's rows with an id in ``(after, top]`` (of the ``whole`` ledger: from its chunks, if packed)."""
        if whole and self.chunks:
            ids, frame, loose = _framechunks.read(self.source, after, top)  # type: ignore[arg-type]  # a Packable source
            if loose >= _framechunks.CHUNK_ROWS:  # rows no chunk held (a ledger older than chunks, rows written by older kernels)
                self._pack()
            return ids, frame
        bounded = f"{where} AND id > ? AND id <= ?" if where else " WHERE id > ? AND id <= ?"
        return self.source.frame_rows(bounded, [*parameters, after, top], names)


def _outgrown(filed: int | None, rows: int) -> bool:
    """Whether the frame file (of ``filed`` rows; None: none, or not this ledger's) should be rewritten for ``rows``."""
    return rows > 0 and (filed is None or rows - filed > filed * REWRITE_SHARE)


def _extended(known: Snapshot, ids: np.ndarray, rows: pd.DataFrame, mark: Mark) -> Snapshot:
    """``known`` and the rows read after it, ordered by time, then id."""
    import numpy as np
    import pandas as pd

    if not len(ids):
        return Snapshot(known.frame, known.ids, mark)
    if not len(known.ids):
        return Snapshot(rows, ids, mark)
    frame = pd.concat([known.frame, rows], ignore_index=True)
    both = np.concatenate([known.ids, ids])
    if rows["timestamp"].iloc[0] < known.frame["timestamp"].iloc[-1]:  # an equal time sorts by id: the new rows' are higher
        order = np.lexsort((both, np.asarray(frame["timestamp"].array.asi8)))
        frame, both = frame.take(order).reset_index(drop=True), both[order]
    return Snapshot(frame, both, mark)


def _copy_on_write() -> bool:
    import pandas as pd

    return int(pd.__version__.split(".")[0]) >= 3 or pd.get_option("mode.copy_on_write") is True


def _handed(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of a kept frame for the caller to change: under copy-on-write a shallow one (a change copies then)."""
    return frame.copy(deep=not _copy_on_write())


def _without(frame: pd.DataFrame, session: str | None) -> pd.DataFrame:
    """The rows of every session but ``session`` (rows of no session kept, as the SQL keeps them), a copy."""
    if session is None:
        return _handed(frame)
    keep = ~(frame["session"].array == session).to_numpy(dtype=bool, na_value=False)
    return _handed(frame) if keep.all() else frame[keep].reset_index(drop=True)
