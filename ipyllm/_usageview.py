"""``%llm_usage``: the spend as a table grouped by model, day, cell, ... and as a plot.

Pure logic over the usage frame (pandas and matplotlib are imported when first needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ipyllm._savings import rates_of, saved_usd
from ipyllm._views import MEASURES, fold

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GROUPINGS", "figure_bundle", "grouped_table", "plot_usage", "usage_table"]


GROUPINGS = ("model", "day", "cell", "batch", "user", "host", "notebook")
_AT = {name: n for n, name in enumerate(MEASURES)}
_COUNTS = ["calls", "input_tokens", "output_tokens", "errors", "retries"]
_TABLE = ["calls", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "errors", "retries", "mean_latency_s"]


def _empty(by: str) -> pd.DataFrame:
    import pandas as pd

    empty = pd.DataFrame({c: [0] for c in _TABLE}, index=pd.Index(["total"], name=by)).astype(dict.fromkeys(_COUNTS, "Int64"))
    return empty.assign(cost_usd=0.0, saved_usd=0.0, mean_latency_s=math.nan)


def grouped_table(rows: list[tuple[Any, ...]], by: str = "model", prices: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """``usage_table``'s table from sums the database made (``_views.aggregate`` per group and model, of one query or
    several): the same rows, columns, dtypes and total, without reading a row of the ledger into Python. Each model's
    saving is priced here, from its sums (``_savings``)."""
    import datetime as dt

    import pandas as pd

    several = by != "cell" or len({row[0] for row in rows if row[2 + 1 + _AT["calls"]]}) > 1
    merged = fold(rows, by, per_model=True, several_sessions=several)
    rates = rates_of({model for _, model in merged}, prices)
    table: dict[Any, list[float]] = {}
    for (key, model), values in merged.items():
        calls = values[_AT["calls"]] or 0
        if not calls:
            continue  # a session's rows taken away left nothing
        known = rates.get(model)
        saved = math.nan
        if known is not None and values[_AT["saved_rows"]]:
            saved = float(values[_AT["saved_prompt"]]) * known[0] + float(values[_AT["saved_completion"]]) * known[1]
            saved -= float(values[_AT["saved_cost"]])
        cost = float(values[_AT["cost_usd"]]) if values[_AT["cost_n"]] else math.nan
        counted = [
            float(values[_AT[name]] or 0) for name in ("input_tokens", "output_tokens", "errors", "retries", "latency_sum", "latency_n")
        ]
        figures = [float(calls), *counted[:2], cost, saved, *counted[2:]]
        before = table.get(key)
        table[key] = figures if before is None else [_plus(a, b) for a, b in zip(before, figures, strict=True)]
    if not table:
        return _empty(by)
    keys = sorted(table, key=lambda k: (k is None, k if k is not None else ""))
    labels: list[Any] = [None if k is None else dt.date.fromisoformat(k) for k in keys] if by == "day" else list(keys)
    grid = [table[k] for k in keys]
    total = [math.nan] * len(grid[0])
    for line in grid:
        total = [_plus(a, b) for a, b in zip(total, line, strict=True)]
    grid.append(total)
    # One frame built from columns (pandas' own operations cost more than the sums, for a few groups).
    columns: dict[str, Any] = {}
    for n, name in enumerate(_TABLE[:-1]):
        cells = [line[n] for line in grid]
        if name in _COUNTS:
            columns[name] = pd.array([int(v) if not math.isnan(v) else 0 for v in cells], dtype="Int64")
        else:
            columns[name] = pd.array([None if math.isnan(v) else v for v in cells], dtype="Float64")
    latency = [line[-2] / line[-1] if line[-1] and not math.isnan(line[-1]) else None for line in grid]
    columns["mean_latency_s"] = pd.array(latency, dtype="Float64")
    # As pandas' groupby names them: a missing key NaN, the groups' index joined to the total's.
    index = pd.Index([math.nan if k is None else k for k in labels], dtype=object).append(pd.Index(["total"]))
    return pd.DataFrame(columns, index=index.rename(by))


def _plus(left: float, right: float) -> float:
    """NaN-skipping sum (as pandas' ``sum(min_count=1)``): NaN only when both are."""
    if math.isnan(left):
        return right
    return left if math.isnan(right) else left + right


def usage_table(frame: pd.DataFrame, by: str = "model", prices: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Spend grouped by model, day (local) or cell: calls, tokens, cost, what prompt caching and batch pricing saved
    against list price (``saved_usd``, NA for a model without a price; ``prices`` is the session's setting), errors,
    retries, mean latency, and a total."""
    import pandas as pd

    counts = ["calls", "input_tokens", "output_tokens", "errors", "retries"]
    columns = ["calls", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "errors", "retries", "mean_latency_s"]
    if frame.empty:
        empty = pd.DataFrame({c: [0] for c in columns}, index=pd.Index(["total"], name=by)).astype(dict.fromkeys(counts, "Int64"))
        return empty.assign(cost_usd=0.0, saved_usd=0.0, mean_latency_s=math.nan)
    if by == "day":
        key = frame["timestamp"].dt.tz_convert(datetime.now().astimezone().tzinfo).dt.date.rename("day")
    elif by == "cell" and frame["session"].nunique() > 1:
        # Cell 2 of one session is not cell 2 of another.
        key = (frame["session"] + " In[" + frame["cell"].astype("string").fillna("-") + "]").rename("cell")
    else:
        key = frame[by]
    work = frame.assign(
        errors=(frame["status"] == "error").astype("Int64"),
        retries=(frame["attempts"] - 1).clip(lower=0),
        saved_usd=saved_usd(frame, prices),
    )
    grouped = work.groupby(key, sort=True, dropna=False)
    table = pd.DataFrame(
        {
            "calls": grouped.size(),
            "input_tokens": grouped["prompt_tokens"].sum(),
            "output_tokens": grouped["completion_tokens"].sum(),
            "cost_usd": grouped["cost_usd"].sum(min_count=1),
            "saved_usd": grouped["saved_usd"].sum(min_count=1),
            "errors": grouped["errors"].sum(),
            "retries": grouped["retries"].sum(),
            "mean_latency_s": grouped["latency_s"].mean(),
        }
    )
    total = table.drop(columns="mean_latency_s").sum(numeric_only=True, min_count=1)
    total["mean_latency_s"] = work["latency_s"].mean()
    table.index = table.index.astype(object)
    table = pd.concat([table, total.rename("total").to_frame().T])
    table.index.name = by
    return table.astype(dict.fromkeys(counts, "Int64"))


def plot_usage(frame: pd.DataFrame) -> Any:
    """Cumulative cost over time and cost by model (needs matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (or pip install 'ipyllm[plot]')") from None
    figure, (over_time, by_model) = plt.subplots(1, 2, figsize=(11, 3.6))
    costs = frame.assign(cost_usd=frame["cost_usd"].fillna(0.0)).sort_values("timestamp")
    if costs.empty:
        over_time.text(0.5, 0.5, "no calls yet", ha="center", va="center", transform=over_time.transAxes)
    else:
        local = costs["timestamp"].dt.tz_convert(datetime.now().astimezone().tzinfo).dt.tz_localize(None)
        over_time.step(local, costs["cost_usd"].cumsum(), where="post")
        spend = costs.groupby("model")["cost_usd"].sum().sort_values()
        by_model.barh(spend.index.astype(str), spend.to_numpy())
    over_time.set_title("cumulative cost (USD)")
    over_time.tick_params(axis="x", labelrotation=30)
    by_model.set_title("cost by model (USD)")
    figure.tight_layout()
    plt.close(figure)  # shown once, by the magic
    return figure


def figure_bundle(figure: Any) -> dict[str, Any]:
    """The figure as a PNG bundle for the display publisher."""
    import base64

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<ipyllm usage plot>"}
