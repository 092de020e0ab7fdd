"""A random ledger, and the checks that the database's views of it equal pandas' view of the whole frame: shared by
the SQLite tests (tests/unit/test_views.py) and the PostgreSQL ones (tests/postgres/test_views_pg.py)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

from ipyllm._store import Store
from ipyllm._usage import UsageRow
from ipyllm._usageview import GROUPINGS, grouped_table, usage_table
from ipyllm._views import BY, Window, aggregate, fold, grouped

#: Priced models (litellm's bundled map), one without a price, and a missing model.
MODELS = ("gpt-4o-mini", "gpt-4o", "no-such-model-xyz", None)
PRICES = {"no-such-model-xyz": None}
NOW = datetime(2026, 12, 4, 15, 7, 33, 123456, tzinfo=timezone.utc)


def random_rows(count: int, seed: int, sessions: tuple[str | None, ...] = ("s1", "s2", "s3", None)) -> list[UsageRow]:
    """Rows over the three days before ``NOW`` with every kind of missing value the ledger can hold."""
    pick = random.Random(seed)
    rows = []
    for _ in range(count):
        status = pick.choice(("ok", "ok", "ok", "error", "cached", "over_budget", None))
        prompt = pick.choice((None, pick.randrange(1, 5000)))
        rows.append(
            UsageRow(
                timestamp=NOW - timedelta(microseconds=pick.randrange(0, 3 * 86400 * 1_000_000)),
                session=pick.choice(sessions),  # type: ignore[arg-type]  # a row without a session, as an old one may be
                cell=pick.choice((None, 1, 2, 3)),
                model=pick.choice(MODELS),  # type: ignore[arg-type]
                prompt_tokens=prompt,
                completion_tokens=pick.choice((None, pick.randrange(0, 900))),
                cost_usd=pick.choice((math.nan, 0.0, pick.random() / 100)),
                latency_s=pick.random() * 4,
                attempts=pick.choice((0, 1, 1, 2, 5)),
                status=status,  # type: ignore[arg-type]
                notebook=pick.choice((None, "a.ipynb", "work/b.ipynb", "")),
                user=pick.choice((None, "ada", "bob")),
                host=pick.choice(("h1", "h2")),
                batch=pick.choice((None, "b1")),
            )
        )
    return rows


#: A window whose edges fall inside quarter hours and days: totals inside, rows at the edges.
SINCE, UNTIL = NOW - timedelta(days=2, minutes=7, seconds=3), NOW - timedelta(hours=5, minutes=1)
#: The windows each ledger's tables are checked over: whole, cut at both ends, a session taken away, a user, filters
#: on keys of the totals, and filters on other columns (read from the rows).
WINDOWS = (
    Window(),
    Window(since=SINCE, until=UNTIL),
    Window(exclude_session="s2"),
    Window(since=SINCE, exclude_session="s1", user="ada"),
    Window(until=UNTIL, where={"model": ["gpt-4o", None], "notebook": "a.ipynb"}),
    Window(where={"status": ["ok", "cached"]}),
    Window(where={"status": ["ok", "cached"], "tokens_estimated": False}),
)


def windowed(frame: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The frame's rows in ``window``, chosen by pandas."""
    keep = pd.Series(True, index=frame.index)
    if window.since is not None:
        keep &= frame["timestamp"] >= pd.Timestamp(window.since)
    if window.until is not None:
        keep &= frame["timestamp"] < pd.Timestamp(window.until)
    if window.exclude_session is not None:
        keep &= (frame["session"] != window.exclude_session).fillna(True)
    for name, values in window.filters().items():
        present = [v for v in values if v is not None]
        match = frame[name].isin(present).fillna(False).astype(bool)
        if None in values:
            match |= frame[name].isna()
        keep &= match
    return frame[keep.to_numpy(dtype=bool)].reset_index(drop=True)


def check_tables(store: Store, frame: pd.DataFrame, window: Window) -> None:
    """``%llm_usage``'s table from the database's sums equals ``usage_table`` of the frame, for every grouping."""
    expected_rows = windowed(frame, window)
    for by in GROUPINGS:
        table = grouped_table(aggregate(store, by, window, per_model=True), by, PRICES)
        expected = usage_table(expected_rows, by, PRICES)
        if by == "cell":  # pandas keeps a session's NA cell apart, as "s In[-]", and a row without a session as NA
            expected.index = pd.Index([k if isinstance(k, (int, str)) or k is None else None for k in expected.index], name="cell")
        pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-9, atol=1e-12, obj=f"--by {by}")


def check_grouped(store: Store, frame: pd.DataFrame, since: datetime | None = None, until: datetime | None = None) -> None:
    """``grouped`` equals pandas' groupby of the whole frame, for every ``by``."""
    rows = windowed(frame, Window(since=since, until=until))
    zone = datetime.now().astimezone().tzinfo
    local = rows["timestamp"].dt.tz_convert(zone)
    for by in BY:
        if by == "day":
            key: Any = local.dt.strftime("%Y-%m-%d")
        elif by == "hour":
            key = local.dt.floor("h").map(lambda t: t.isoformat())
        elif by == "cell":
            key = (rows["session"] + " In[" + rows["cell"].astype("string").fillna("-") + "]").astype(object)
        else:
            key = rows[by].astype(object)
        key = key.where(key.notna(), None)
        errors = (rows["status"] == "error").fillna(False).astype(int)
        groups = rows.assign(errors=errors).groupby(key.rename("key"), dropna=False, sort=False)
        expected = {
            (None if isinstance(k, float) and math.isnan(k) else k): {
                "calls": len(g),
                "input_tokens": int(g["prompt_tokens"].sum()),
                "output_tokens": int(g["completion_tokens"].sum()),
                "cost_usd": None if g["cost_usd"].isna().all() else g["cost_usd"].sum(),
                "errors": int(g["errors"].sum()),
                "mean_latency_s": g["latency_s"].mean(),
            }
            for k, g in groups
        }
        found = {entry.pop("key"): entry for entry in grouped(store, by, since=since, until=until)}
        assert set(found) == set(expected), by
        for k, figures in expected.items():
            got = found[k]
            for name, value in figures.items():
                assert (got[name] is None) == (value is None), (by, k, name)
                if value is not None:
                    assert got[name] == pytest_approx(value), (by, k, name, got[name], value)


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, rel=1e-9, abs=1e-12)


def folded_calls(store: Store, by: str, window: Window) -> dict[Any, int]:
    return {key: int(values[0]) for key, values in fold(aggregate(store, by, window), by).items() if values[0]}
