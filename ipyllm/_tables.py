"""A DataFrame or Series as compact text for a prompt, and the tokens of a text, counted without litellm.

CSV is the form: of the plain-text forms a model reads, it takes the fewest tokens (no padding as in
``to_string``, no repeated keys as in JSON records, no rule lines as in Markdown), and every model reads it. One
line before it gives the shape and the dtypes, which CSV loses. A table over the token budget keeps its head and
tail rows, about half each, with one line saying how many were left out; how many rows fit is found by binary
search over rendered slices, so a frame of a million rows costs no more than one of a thousand. Floats are written
with ``pandas.options.display.precision`` significant digits (6 by default), as a notebook shows them.

Tokens are counted with tiktoken's ``cl100k_base``, the encoding litellm's ``token_counter`` uses for models it
does not know, read from the copy litellm ships (``litellm_core_utils/tokenizers``) without importing litellm,
whose import takes seconds. Without tiktoken or that file, a text counts ``len(text.encode()) // 2 + 1``: no text
has fewer than 2 UTF-8 bytes per cl100k token on average in practice (English runs near 4), so the budget still
holds, with room to spare.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["count_text_tokens", "table_text"]

_LOADING = threading.Lock()


@lru_cache(maxsize=1)
def _encoding() -> Any:
    """cl100k_base from litellm's bundled files, or None when tiktoken or the files are not there."""
    try:
        import tiktoken
    except ImportError:
        return None
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    bundled = next((Path(p) / "litellm_core_utils" / "tokenizers" for p in locations), None)
    with _LOADING:
        # tiktoken reads its cache directory from the environment; litellm sets it to its own copy on import, and a
        # user's setting wins. Set only while loading, so that nothing else sees a change.
        borrowed = "TIKTOKEN_CACHE_DIR" not in os.environ and bundled is not None and bundled.is_dir()
        if borrowed:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
        try:
            return tiktoken.get_encoding("cl100k_base")
        except Exception:  # no file and no network: tiktoken raises what its download raised
            return None
        finally:
            if borrowed:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)


def count_text_tokens(text: str) -> int:
    """The text's tokens with tiktoken's ``cl100k_base`` (what litellm counts for models it does not know); without
    tiktoken, ``len(text.encode()) // 2 + 1``, more than cl100k counts for any ordinary text."""
    encoding = _encoding()
    if encoding is None:
        return len(text.encode()) // 2 + 1
    return len(encoding.encode(text, disallowed_special=()))


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _header(value: pd.DataFrame | pd.Series) -> str:
    if value.ndim == 1:
        named = f" {value.name!r}" if value.name is not None else ""
        return f"Series{named}, {_count(len(value), 'row')}, dtype {value.dtype}:"
    dtypes = ", ".join(f"{name}: {dtype}" for name, dtype in value.dtypes.items())
    return f"DataFrame, {_count(len(value), 'row')} × {_count(value.shape[1], 'column')} ({dtypes}):"


def _csv(value: pd.DataFrame | pd.Series, header: bool = True) -> str:
    import pandas as pd

    # An unnamed Series has no column name to write: pandas would write "0".
    header = header and not (value.ndim == 1 and value.name is None)
    precision = pd.get_option("display.precision")
    return value.to_csv(header=header, lineterminator="\n", float_format=f"%.{precision}g")


def _left_out(number: int) -> str:
    return f"… {_count(number, 'row')} left out …"


def table_text(value: pd.DataFrame | pd.Series, budget: int = 2000) -> str:
    """A DataFrame or Series as CSV (its index and index name kept) under a line giving its shape and dtypes, e.g.
    ``DataFrame, 100,000 rows × 3 columns (a: int64, b: float64, c: object):`` or
    ``Series 'price', 1,000 rows, dtype float64:``.

    When the whole table would take more than ``budget`` tokens (``count_text_tokens``), as many head and tail rows
    as fit are kept (the head one more when odd), with ``… 99,960 rows left out …`` between them: the whole text is
    then at most ``budget`` tokens. A budget smaller than the first line gives that line and
    ``… all N rows left out …``.
    """
    header = _header(value)
    rows = len(value)

    def text(kept: int) -> str:
        if kept >= rows:
            return f"{header}\n{_csv(value)}".rstrip("\n")
        head, tail = (kept + 1) // 2, kept // 2
        shown = _csv(value.iloc[:head]) + _left_out(rows - kept) + "\n"
        if tail:
            shown += _csv(value.iloc[rows - tail :], header=False)
        return f"{header}\n{shown}".rstrip("\n")

    def fits(kept: int) -> bool:
        return count_text_tokens(text(kept)) <= budget

    # Every row takes a token at least, so no more than ``budget`` rows can fit: the whole frame is rendered only
    # when it is that short. The largest count that fits is found by doubling, then by halving the gap.
    if rows <= budget and fits(rows):
        return text(rows)
    if rows <= 1 or not fits(1):
        return f"{header}\n… all {_count(rows, 'row')} left out …"
    low, high = 1, 2
    while high < min(rows, budget) and fits(high):
        low, high = high, high * 2
    high = min(high, rows - 1, budget)
    while low < high:  # low fits; the answer lies in [low, high]
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return text(low)
