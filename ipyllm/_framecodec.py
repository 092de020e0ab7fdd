"""Usage frames as plain numpy arrays and back: the one encoding of the frame file (``_framefile``) and of the chunks
packed in the ledger (``_framechunks``).

Every column of ``COLUMNS``, with the rows' ids: the time in microseconds, as the ledger keeps it; nullable numbers
as values and a mask of the missing ones; strings dictionary-encoded (codes, -1 for a missing one, and the distinct
values as UTF-8 text with their ends). Data only, so it is stored and loaded without pickle. Decoding checks every
length and code, so a damaged encoding raises (``ValueError``, ``KeyError``) rather than giving a wrong frame; parts
decoded separately (chunks) are joined before the columns are built, so joining costs no per-part pandas work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ipyllm._usage import COLUMNS, column_array

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["FORMAT", "Raw", "build", "decode", "encode"]

#: Changes whenever the encoding or the frame's columns do: an encoding of another format is not decoded.
FORMAT = f"ipyllm-frame-1:{','.join(f'{name}={dtype}' for name, dtype in COLUMNS.items())}"

#: A decoded part: its ids, and per column its values (strings as an object array, None where missing) and the mask
#: of its missing values (None: missing ones are in the values).
Raw = tuple["np.ndarray", dict[str, tuple["np.ndarray", "np.ndarray | None"]]]


def encode(ids: np.ndarray, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The arrays of ``frame`` (every column of ``COLUMNS``) and its rows' ``ids``."""
    import numpy as np

    arrays = {"ids": np.asarray(ids, dtype="int64")}
    for name, dtype in COLUMNS.items():
        arrays.update(_encoded(name, dtype, frame[name]))
    return arrays


def decode(arrays: dict[str, np.ndarray]) -> Raw:
    """The ids and raw columns of ``encode``'s arrays, checked."""
    ids = arrays["ids"].astype("int64", copy=False)
    if ids.ndim != 1:
        raise ValueError("ids: damaged")
    return ids, {name: _raw(name, dtype, arrays, len(ids)) for name, dtype in COLUMNS.items()}


def build(parts: Sequence[Raw]) -> tuple[np.ndarray, pd.DataFrame]:
    """The ids and usage frame of decoded ``parts``, one after the other (in their order: sort them after)."""
    import numpy as np
    import pandas as pd

    ids = np.concatenate([part[0] for part in parts]) if parts else np.zeros(0, dtype="int64")
    data = {}
    for name, dtype in COLUMNS.items():
        columns = [part[1][name] for part in parts]
        values = np.concatenate([values for values, _ in columns]) if columns else np.zeros(0, dtype=object)
        masks = [mask for _, mask in columns if mask is not None]
        missing: np.ndarray | None = np.concatenate(masks) if masks else None
        data[name] = column_array(dtype, values, missing)
    return ids, pd.DataFrame(data, columns=list(COLUMNS), copy=False)


def _encoded(name: str, dtype: str, column: pd.Series) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    if dtype.startswith("datetime64"):
        return {name: np.asarray(column.array.asi8) // 1000}  # microseconds, as the ledger keeps them
    if dtype == "float64":
        return {name: column.to_numpy(dtype="float64")}
    missing = column.isna().to_numpy(dtype=bool)
    if dtype != "string":
        return {name: column.to_numpy(dtype="int64" if dtype == "Int64" else bool, na_value=0), f"{name}.missing": missing}
    codes, distinct = pd.factorize(column, use_na_sentinel=True)
    texts = [str(value) for value in distinct]
    ends = np.cumsum([len(text) for text in texts], dtype="int64")
    return {
        f"{name}.codes": codes.astype("int32"),
        f"{name}.text": np.frombuffer("".join(texts).encode(), dtype="uint8"),
        f"{name}.ends": ends,
    }


def _raw(name: str, dtype: str, arrays: dict[str, np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One column's values and mask, checked: damaged arrays raise here (a length, or a code out of range)."""
    import numpy as np

    if dtype == "string":
        codes, ends = arrays[f"{name}.codes"].astype("int64"), arrays[f"{name}.ends"].astype("int64")
        text = arrays[f"{name}.text"].astype("uint8", copy=False).tobytes().decode()
        starts = np.concatenate([[0], ends]).astype("int64")[:-1]
        in_range = not len(codes) or -1 <= codes.min() <= codes.max() < len(ends)
        if len(codes) != rows or not in_range or (len(ends) and (ends[-1] != len(text) or (ends < starts).any())):
            raise ValueError(f"{name}: damaged")
        distinct = np.empty(len(ends) + 1, dtype=object)  # the last one, at code -1, is a missing value
        distinct[:-1] = [text[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
        return distinct.take(codes), None
    values = arrays[name]
    missing = arrays.get(f"{name}.missing")
    masked = dtype in ("Int64", "boolean")
    if values.shape != (rows,) or (missing is None) == masked or (missing is not None and missing.shape != (rows,)):
        raise ValueError(f"{name}: damaged")
    return values, missing
