"""The usage frame: exact columns and dtypes, empty or full, one row per call in call order."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ipyllm
from ipyllm import _api
from ipyllm._locations import default_usage_db
from ipyllm._sqlite import SQLiteStore
from ipyllm._store import MemoryLedger
from ipyllm._usage import COLUMNS, UsageRow, frame_from_columns, to_frame
from ipyllm.testing import Fault, StubServer

SPEC_DTYPES = {
    "timestamp": "datetime64[ns, UTC]",
    "session": "string",
    "cell": "Int64",
    "source": "string",
    "kind": "string",
    "model": "string",
    "provider": "string",
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "total_tokens": "Int64",
    "cached_tokens": "Int64",
    "tokens_estimated": "boolean",
    "cost_usd": "float64",
    "latency_s": "float64",
    "attempts": "Int64",
    "status": "string",
    "error": "string",
    "cache_creation_tokens": "Int64",
    "images": "Int64",
    "batch": "string",
    "tier": "string",
    "notebook": "string",
    "user": "string",
    "host": "string",
}


def dtypes(frame: pd.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in frame.dtypes.items()}


def test_the_empty_frame_has_every_column_and_dtype(session: _api.Session) -> None:
    frame = ipyllm.usage()
    assert frame.empty
    assert list(frame.columns) == list(SPEC_DTYPES)
    assert dtypes(frame) == SPEC_DTYPES
    assert COLUMNS == SPEC_DTYPES


def test_a_full_frame_keeps_the_dtypes_and_missing_values(live: StubServer) -> None:
    ipyllm.complete("first")
    live.script(Fault.status(400))
    try:
        ipyllm.complete("second")
    except ipyllm.LLMError:
        pass
    ipyllm.embed(["third"])
    frame = ipyllm.usage()
    assert dtypes(frame) == SPEC_DTYPES
    assert list(frame["kind"]) == ["chat", "chat", "embedding"]
    assert list(frame["status"]) == ["ok", "error", "ok"]
    assert frame["timestamp"].is_monotonic_increasing
    assert frame["error"].isna().tolist() == [True, False, True]
    assert frame.loc[1, "prompt_tokens"] is pd.NA and math.isnan(frame.loc[1, "cost_usd"])
    assert frame["cell"].isna().all(), "outside IPython there is no cell"
    assert (frame["session"] == ipyllm.SESSION_ID).all()
    assert frame["cost_usd"].sum() > 0


def test_all_sessions_includes_other_sessions_rows(session: _api.Session) -> None:
    # Another kernel's row in the ledger file (this test's own: see conftest's isolated fixture) ...
    store = SQLiteStore(default_usage_db())
    store.append(UsageRow(timestamp=datetime.now(timezone.utc) - timedelta(hours=1), session="another-kernel", model="b"))
    store.close()
    # ... and rows in memory: this session's, and one another session handed over.
    ledger = session.ledger
    assert isinstance(ledger, MemoryLedger)
    ledger.append(UsageRow(session=ipyllm.SESSION_ID, model="a"))
    ledger.append(UsageRow(session="someone-else", model="c"))
    assert list(ipyllm.usage()["model"]) == ["a"]
    everything = ipyllm.usage(all_sessions=True)
    assert list(everything["model"]) == ["b", "a", "c"], "every session, in time order"
    assert list(everything["session"]) == ["another-kernel", ipyllm.SESSION_ID, "someone-else"]
    assert dtypes(everything) == SPEC_DTYPES


def test_to_frame_accepts_rows_built_by_hand() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    rows = [UsageRow(timestamp=when, session="s", cell=3, model="m", prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_usd=0.5)]
    frame = to_frame(rows)
    assert frame.loc[0, "timestamp"] == pd.Timestamp(when)
    assert frame.loc[0, "cell"] == 3 and frame.loc[0, "total_tokens"] == 3
    assert dtypes(frame) == SPEC_DTYPES


def test_images_sent_with_a_call_are_an_int64_column_na_where_unknown() -> None:
    frame = to_frame([UsageRow(model="m", images=2), UsageRow(model="m")])
    assert frame["images"].dtype == "Int64"
    assert frame.loc[0, "images"] == 2 and frame.loc[1, "images"] is pd.NA
    assert list(frame.columns).index("images") == list(frame.columns).index("cache_creation_tokens") + 1
    assert list(frame.columns).index("batch") == list(frame.columns).index("images") + 1


def test_cache_reads_and_writes_are_read_from_either_providers_usage() -> None:
    from ipyllm._cost import cache_creation_tokens, cached_tokens

    openai = {"prompt_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 1536}}
    anthropic = {"input_tokens": 10, "cache_creation_input_tokens": 1100, "cache_read_input_tokens": 0}
    assert (cached_tokens(openai), cache_creation_tokens(openai)) == (1536, None)
    assert (cached_tokens(anthropic), cache_creation_tokens(anthropic)) == (0, 1100)
    assert cache_creation_tokens({"cache_creation_input_tokens": True}) is None


def pandas_frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """The usage frame built value by value, as pandas builds a column from a list (the way it was built before)."""
    data: dict[str, Any] = {}
    for name, dtype in COLUMNS.items():
        values = columns[name]
        if name == "timestamp":
            data[name] = pd.to_datetime(np.asarray(values, dtype="int64"), unit="us", utc=True).as_unit("ns")
        elif dtype == "float64":
            data[name] = np.asarray([math.nan if v is None else v for v in values], dtype="float64")
        else:
            data[name] = pd.array(list(values), dtype=dtype)
    return pd.DataFrame(data)


#: Four values of each kind of column, the second one missing; and a value to stand in for it.
SAMPLES: dict[str, tuple[list[Any], Any]] = {
    "string": (["gpt-4o", None, "ü ✓", ""], "x"),
    "Int64": ([3, None, 0, 2**40], 7),
    "boolean": ([1, None, 0, 1], 0),
    "float64": ([0.5, None, math.nan, 0.0], 1.5),
}


@pytest.mark.parametrize("shape", ["mixed", "all missing", "none missing", "empty"])
def test_the_frame_is_built_column_wise_with_the_values_and_dtypes_pandas_gives(shape: str) -> None:
    def values(dtype: str) -> list[Any]:
        sample, stand_in = SAMPLES[dtype]
        shaped = {"mixed": sample, "all missing": [None] * 4, "none missing": [stand_in if v is None else v for v in sample]}
        return shaped.get(shape, [])

    columns = {name: values(dtype) for name, dtype in COLUMNS.items() if name != "timestamp"}
    columns["timestamp"] = [1_700_000_000_000_000 - n for n in range(len(columns["cell"]))]
    frame = frame_from_columns(columns, timestamps_in_micros=True)
    pd.testing.assert_frame_equal(frame, pandas_frame(columns))
    assert dtypes(frame) == SPEC_DTYPES
