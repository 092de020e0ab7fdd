"""``%llm_usage`` groupings over rows of several sessions (built by hand: the grouping, not the calls, is tested)."""

from __future__ import annotations

from ipyllm._usage import UsageRow, to_frame
from ipyllm._usageview import usage_table


def test_by_cell_tells_the_sessions_apart_and_keeps_calls_outside_cells() -> None:
    rows = [
        UsageRow(session="a", cell=2, cost_usd=0.1),
        UsageRow(session="b", cell=2, cost_usd=0.2),
        UsageRow(session="b", cell=None, cost_usd=0.3),
    ]
    table = usage_table(to_frame(rows), "cell")
    assert table["calls"].to_dict() == {"a In[2]": 1, "b In[2]": 1, "b In[-]": 1, "total": 3}
    assert table.loc["total", "cost_usd"] == 0.1 + 0.2 + 0.3


def test_by_cell_in_one_session_keeps_cell_numbers() -> None:
    rows = [UsageRow(session="a", cell=2, cost_usd=0.1), UsageRow(session="a", cell=2, cost_usd=0.1), UsageRow(session="a", cost_usd=0.5)]
    table = usage_table(to_frame(rows), "cell")
    assert table.loc[2, "calls"] == 2 and table.loc["total", "calls"] == 3
    assert table.loc["total", "cost_usd"] == 0.1 + 0.1 + 0.5
