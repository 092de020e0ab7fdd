"""The ledger's rows packed into column chunks beside them, so that the first read of a whole ledger's frame, in any
kernel on any machine, decodes a few blobs instead of fetching every row (``ipyllm.usage(all_sessions=True)`` of
100,000 rows: about 0.1 s instead of 0.8 s).

A chunk (table ``frame_chunks``, made by the schemas' migrations: ``_sqlschema``, ``_pgschema``) holds the rows
with an id in ``(after_id, last_id]`` as they were when it was packed: their frame's arrays (``_framecodec``) in one
``.npz`` blob, with how many rows and the last one's uid. Rows are only appended, so a chunk is right while its
range still has as many rows and the same row at its end. A read checks that for every chunk in the statement that
reads them, and reads the rows themselves for a range with no chunk, or one that is stale (a PostgreSQL row
committed into the range after it was packed, a row deleted by hand), damaged, or of another format.

Kernels pack (``_framecache``): after every ``CHECK_EVERY`` rows a store writes, and after a read of the whole ledger
that found ``CHUNK_ROWS`` rows or more in no chunk, a thread packs the whole chunks of ``CHUNK_ROWS`` rows that the
rows above the last chunk make. So a ledger written by ipyllm has fewer than about ``CHUNK_ROWS`` rows unpacked, and
an older one is packed after its first read. Two kernels
packing at once write the same range under the same key: the second is dropped. Packing is only ever a shortcut:
one that fails leaves the ledger as it was.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ipyllm._framecodec import FORMAT, Raw, build, decode, encode
from ipyllm._usage import COLUMNS
from ipyllm._views import run_query

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["CHECK_EVERY", "CHUNK_ROWS", "PUT", "Packable", "pack", "packed_quietly", "read"]

#: Rows per chunk.
CHUNK_ROWS = 5_000
#: A store looks for rows to pack at its first row written, then after every this many more.
CHECK_EVERY = 500

#: A chunk written (``?`` placeholders): a range already packed is kept, unless its chunk is of another format.
PUT = (
    "INSERT INTO frame_chunks (after_id, last_id, row_count, last_uid, format, data) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (after_id) DO UPDATE SET last_id = excluded.last_id, row_count = excluded.row_count,"
    " last_uid = excluded.last_uid, format = excluded.format, data = excluded.data WHERE frame_chunks.format <> excluded.format"
)
# The chunks of a span that still hold what their range holds, in one statement (one snapshot of the ledger).
_READ = (
    "SELECT c.after_id, c.last_id, c.data FROM frame_chunks c WHERE c.format = ? AND c.after_id >= ? AND c.last_id <= ?"
    " AND c.row_count = (SELECT COUNT(*) FROM usage u WHERE u.id > c.after_id AND u.id <= c.last_id)"
    " AND c.last_uid = (SELECT u.uid FROM usage u WHERE u.id = c.last_id) ORDER BY c.after_id"
)
_PACKED = "SELECT COALESCE(MAX(last_id), 0) FROM frame_chunks WHERE format = ?"
_NEXT = "SELECT id, uid FROM usage WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?"
_RANGE = " WHERE id > ? AND id <= ?"

log = logging.getLogger("ipyllm")


class Packable(Protocol):
    """What chunks need of a store: its dialect, one read-only query, the rows of a ``WHERE`` clause, a chunk written."""

    dialect: str

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def frame_rows(self, where: str, parameters: Sequence[Any], names: list[str]) -> tuple[np.ndarray, pd.DataFrame]: ...

    def put_chunk(self, values: Sequence[Any]) -> None:
        """Run ``PUT`` with ``values``."""
        ...


def read(source: Packable, after: int, top: int) -> tuple[np.ndarray, pd.DataFrame, int]:
    """The rows with an id in ``(after, top]``, every column, ordered by time, then id: from the chunks that hold them,
    and from the rows where none does; and how many came from the rows."""
    parts: list[Raw] = []
    rest: list[tuple[np.ndarray, pd.DataFrame]] = []
    reached = after
    for first, last, data in run_query(source, _READ, [FORMAT, after, top]):
        if first < reached:  # overlaps the chunk before it (packed by two kernels at once): the rows are there
            continue
        part = _decoded(bytes(data))
        if part is None:
            continue
        if first > reached:
            rest.append(source.frame_rows(_RANGE, [reached, first], list(COLUMNS)))
        parts.append(part)
        reached = last
    if top > reached or not parts:
        rest.append(source.frame_rows(_RANGE, [reached, top], list(COLUMNS)))
    loose = sum(len(ids) for ids, _ in rest)
    if not parts:
        return *rest[0], loose
    return *_in_order([build(parts), *rest]), loose


def pack(source: Packable, stop: Callable[[], bool] = lambda: False) -> int:
    """Pack the whole chunks that the rows above the last chunk make (until ``stop()``); how many were written."""
    written = 0
    while not stop():
        after = int(run_query(source, _PACKED, [FORMAT])[0][0])
        found = run_query(source, _NEXT, [after, CHUNK_ROWS - 1])
        if not found:
            return written
        last, uid = found[0]
        ids, frame = source.frame_rows(_RANGE, [after, last], list(COLUMNS))
        source.put_chunk([after, last, len(ids), uid, FORMAT, _encoded(ids, frame)])
        written += 1
    return written


def packed_quietly(source: Packable, stop: Callable[[], bool]) -> None:
    """``pack``, in a background thread: a failure (the ledger away, closed, locked) leaves it for later."""
    try:
        pack(source, stop)
    except Exception as error:  # packing is a shortcut for readers: never an error of the call that wrote
        log.debug("ipyllm: the ledger's rows were not packed this time: %s", error)


#: The dtypes a chunk's arrays may have (``_framecodec``'s): a chunk names one of these for each array, nothing else.
_DTYPES = ("int64", "int32", "uint8", "bool", "float64")


def _encoded(ids: np.ndarray, frame: pd.DataFrame) -> bytes:
    """A chunk's blob: a line of JSON naming each array's dtype and length, then all their bytes, zlib-compressed (a
    fifth of the size: a chunk of 5,000 rows in about 140 kB). Data only: it is read back with ``np.frombuffer``."""
    import numpy as np

    arrays = {name: np.ascontiguousarray(array) for name, array in encode(ids, frame).items()}
    about = [[name, array.dtype.name, len(array)] for name, array in arrays.items()]
    body = b"".join(array.tobytes() for array in arrays.values())
    return json.dumps(about).encode() + b"\n" + zlib.compress(body, 1)


def _decoded(data: bytes) -> Raw | None:
    """A chunk's rows, or None when it is damaged (its rows are read instead)."""
    import numpy as np

    try:
        head, _, packed = data.partition(b"\n")
        body, arrays, at = zlib.decompress(packed), {}, 0
        for name, dtype, length in json.loads(head):
            if dtype not in _DTYPES:
                raise ValueError(f"{name}: dtype {dtype}")
            size = np.dtype(dtype).itemsize * int(length)
            arrays[str(name)] = np.frombuffer(body, dtype=dtype, count=int(length), offset=at)
            at += size
        if at != len(body):
            raise ValueError("damaged")
        return decode(arrays)
    except Exception:
        return None


def _in_order(pieces: list[tuple[np.ndarray, pd.DataFrame]]) -> tuple[np.ndarray, pd.DataFrame]:
    """Pieces of rows joined and ordered by time, then id (sorted only when they are not already)."""
    import numpy as np
    import pandas as pd

    pieces = [piece for piece in pieces if len(piece[0])] or pieces[:1]
    ids = np.concatenate([piece[0] for piece in pieces])
    frame = pieces[0][1] if len(pieces) == 1 else pd.concat([piece[1] for piece in pieces], ignore_index=True)
    times = np.asarray(frame["timestamp"].array.asi8)
    later, same = times[1:] > times[:-1], times[1:] == times[:-1]
    if (later | (same & (ids[1:] > ids[:-1]))).all():
        return ids, frame
    order = np.lexsort((ids, times))
    return ids[order], frame.take(order).reset_index(drop=True)
