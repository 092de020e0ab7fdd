"""A whole ledger's usage frame kept on disk between kernels, so that a fresh kernel's first
``ipyllm.usage(all_sessions=True)`` reads only the rows added since (``_framecache`` decides when).

One file per ledger, in the user's cache directory: ``$IPYLLM_CACHE_DIR/frames/`` when that variable is set (set
empty, no copy is kept), else ``~/.cache/ipyllm/frames/`` (``$XDG_CACHE_HOME``; ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows). It is named by a hash of the ledger's identity: a file's path, or a server's host,
port, database and user (never its password, which is in no name and no content).

The file is numpy's ``.npz`` (a zip of arrays, each with its CRC) of the frame's arrays (``_framecodec``: strings
dictionary-encoded, nullable numbers as values and a mask), with the format, the ledger and the mark. It is loaded with
``allow_pickle=False``, so a file put there can hold data only, never code. It is written to a temporary file (its
owner's only: mode 0600) renamed over the old one, so a reader never sees half of it. A file that cannot be read,
is damaged, or belongs to another ledger or another ipyllm is ignored (and replaced): never an error.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ipyllm._framecodec import FORMAT, build, decode, encode
from ipyllm._locations import Server, SQLiteFile

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["Mark", "Snapshot", "frame_file", "identity_of", "load", "save"]


@dataclass(frozen=True)
class Mark:
    """What a frame read from the ledger was read up to: the highest ``id`` then, how many rows had an id up to it, and
    that row's ``uid``. Rows are only ever appended, so while the ledger still has ``count`` rows up to ``top`` and the
    same row at ``top``, the frame holds what it held, and only rows above ``top`` are new."""

    top: int = 0
    count: int = 0
    uid: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """A usage frame (ordered by time, then id), the ids of its rows, and the ledger's mark when it was read."""

    frame: pd.DataFrame
    ids: np.ndarray
    mark: Mark


def identity_of(location: SQLiteFile | Server) -> str:
    """What names a ledger, without a secret: a file's absolute path; a server's host, port, database and user."""
    if isinstance(location, Server):
        return f"postgresql:{location.host}:{location.port or ''}:{location.database}:{location.user or ''}"
    return f"sqlite:{location.path}"


def _cache_dir() -> Path | None:
    chosen = os.environ.get("IPYLLM_CACHE_DIR")
    if chosen is not None:
        return Path(chosen).expanduser() if chosen else None
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "ipyllm"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "ipyllm" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ipyllm"


def frame_file(identity: str) -> Path | None:
    """Where the ledger ``identity``'s frame is kept (None: none is kept)."""
    folder = _cache_dir()
    return None if folder is None else folder / "frames" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.npz"


def save(identity: str, snapshot: Snapshot) -> None:
    """Keep ``snapshot`` (of every column) as the ledger's frame file; a file that cannot be written is not kept."""
    import numpy as np

    path = frame_file(identity)
    if path is None:
        return
    temporary = None
    try:
        arrays = {
            "about": np.array([FORMAT, identity, snapshot.mark.uid or ""]),
            "mark": np.array([snapshot.mark.top, snapshot.mark.count]),
        }
        arrays.update(encode(snapshot.ids, snapshot.frame))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".frame-", suffix=".tmp")  # mode 0600
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy's stubs type the keywords as allow_pickle
        os.replace(temporary, path)
    except Exception:  # a full disk, a text that is no UTF-8: the ledger is read instead next time
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def load(identity: str) -> Snapshot | None:
    """The ledger ``identity``'s frame as last kept; None when there is none, or it is damaged, foreign or of another
    ipyllm (to be replaced)."""
    import numpy as np

    path = frame_file(identity)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        about = [str(text) for text in arrays["about"]]
        if about[:2] != [FORMAT, identity]:
            return None
        top, count = (int(number) for number in arrays["mark"])
        ids, frame = build([decode(arrays)])
        return Snapshot(frame, ids, Mark(top, count, about[2] or None))
    except Exception:  # anything unreadable is no frame: the ledger is read instead, and the file replaced
        return None
