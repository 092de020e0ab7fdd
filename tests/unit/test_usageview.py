"""``%llm_usage``: the spend as a table grouped by model, day or cell, and as a plot.

The groupings over rows of several sessions built by hand (the grouping, not the calls, is tested); then the
magic over real HTTP to the stub server, its totals priced by hand from litellm's price map."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm._litellm import load_litellm
from ipyllm._locations import default_usage_db
from ipyllm._sqlite import SQLiteStore
from ipyllm._usage import UsageRow, to_frame
from ipyllm._usageview import usage_table
from ipyllm.testing import Fault, StubServer, count_tokens


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


# -- %llm_usage over real HTTP to the stub server ---------------------------------------------------------------


def test_llm_usage_shows_spend_by_model_with_a_total(ip: Any, live: StubServer) -> None:
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0)
    live.script(Fault.status(503))
    with capture_output():
        ip.run_cell("%llm one")
        ip.run_cell("%llm -m gpt-4o two")
    live.script(Fault.status(400))
    with capture_output():
        ip.run_cell("%llm three")
    table = ip.run_line_magic("llm_usage", "")
    assert list(table.index) == ["gpt-4o", "gpt-4o-mini", "total"]
    assert list(table.columns) == ["calls", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "errors", "retries", "mean_latency_s"]
    assert table.loc["gpt-4o-mini", "calls"] == 2 and table.loc["gpt-4o-mini", "errors"] == 1
    assert table.loc["gpt-4o-mini", "retries"] == 1
    assert table.loc["total", "calls"] == 3
    # Expected values from what the server received and answered, priced by hand from litellm's map.
    prices = load_litellm().model_cost
    ok = [r for r in live.requests if not r.fault]
    assert [r.body["model"] for r in ok] == ["gpt-4o-mini", "gpt-4o"]
    expected: dict[str, float] = {}
    tokens = {"input": 0, "output": 0}
    for request in ok:
        model, prompt = request.body["model"], request.body["messages"][-1]["content"]
        prompt_tokens = count_tokens(prompt) + 3 + 3
        completion_tokens = count_tokens(f"[{model}] {prompt}")
        tokens["input"] += prompt_tokens
        tokens["output"] += completion_tokens
        entry = prices[model]
        expected[model] = prompt_tokens * entry["input_cost_per_token"] + completion_tokens * entry["output_cost_per_token"]
    assert table.loc["gpt-4o", "cost_usd"] == pytest.approx(expected["gpt-4o"])
    assert table.loc["gpt-4o-mini", "cost_usd"] == pytest.approx(expected["gpt-4o-mini"]), "the failed call costs nothing"
    assert table.loc["total", "cost_usd"] == pytest.approx(expected["gpt-4o"] + expected["gpt-4o-mini"])
    assert (table.loc["total", "input_tokens"], table.loc["total", "output_tokens"]) == (tokens["input"], tokens["output"])
    assert (table.loc["total", "errors"], table.loc["total", "retries"]) == (1, 1)


def test_llm_usage_all_by_day_and_cell(ip: Any, live: StubServer) -> None:
    store = SQLiteStore(default_usage_db())
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    store.append(
        UsageRow(
            timestamp=yesterday,
            session="earlier",
            cell=1,
            model="gpt-4o",
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=0.5,
            latency_s=2.0,
        )
    )
    store.close()
    with capture_output():
        ip.run_cell("%llm today", store_history=True)
    mine = ip.run_line_magic("llm_usage", "")
    assert list(mine.index) == ["gpt-4o-mini", "total"]
    everything = ip.run_line_magic("llm_usage", "--all")
    assert list(everything.index) == ["gpt-4o", "gpt-4o-mini", "total"]
    # This session's call, priced by hand: the stub's token counts at litellm's gpt-4o-mini prices.
    entry = load_litellm().model_cost["gpt-4o-mini"]
    prompt_tokens, completion_tokens = count_tokens("today") + 3 + 3, count_tokens("[gpt-4o-mini] today")
    today = prompt_tokens * entry["input_cost_per_token"] + completion_tokens * entry["output_cost_per_token"]
    assert mine.loc["total", "cost_usd"] == pytest.approx(today)
    assert everything.loc["total", "cost_usd"] == pytest.approx(0.5 + today)
    assert everything.loc["total", "calls"] == 2 and everything.loc["total", "input_tokens"] == 10 + prompt_tokens
    assert everything.loc["gpt-4o", "mean_latency_s"] == 2.0
    by_day = ip.run_line_magic("llm_usage", "--all --by day")
    assert len(by_day) == 3 and by_day.index.name == "day"
    by_cell = ip.run_line_magic("llm_usage", "--by cell")
    assert list(by_cell.index) == [1, "total"]
    with pytest.raises(Exception, match="invalid choice: 'week'"):
        ip.run_line_magic("llm_usage", "--by week")


def test_llm_usage_plot(ip: Any, live: StubServer) -> None:
    pytest.importorskip("matplotlib")
    with capture_output() as captured:
        ip.run_cell("%llm one")
        ip.run_cell("%llm -m gpt-4o two")
        ip.run_line_magic("llm_usage", "--plot")
    image = captured.outputs[-1].data["image/png"]
    assert len(image) > 1000


def test_llm_usage_plot_without_matplotlib_says_what_to_install(ip: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(UsageError, match=r"--plot needs matplotlib: pip install matplotlib"):
        ip.run_line_magic("llm_usage", "--plot")
