"""What caching and batch pricing saved against list price (``ipyllm._savings``), over usage rows built by hand and
priced here from litellm's bundled price map; and that it needs no litellm import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from ipyllm._pricemap import price_map
from ipyllm._savings import list_usd, saved_usd
from ipyllm._usage import UsageRow, to_frame
from ipyllm._usageview import usage_table


def rate(model: str, name: str) -> float:
    return float(price_map()[model][name])


def test_each_row_saves_its_list_price_minus_its_cost() -> None:
    inp, out = rate("gpt-4o-mini", "input_cost_per_token"), rate("gpt-4o-mini", "output_cost_per_token")
    rows = [
        UsageRow(model="gpt-4o-mini", prompt_tokens=1500, completion_tokens=10, cached_tokens=1408, cost_usd=0.0001),
        UsageRow(model="openai/gpt-4o-mini", prompt_tokens=100, completion_tokens=10, cost_usd=100 * inp + 10 * out),
        UsageRow(model="gpt-4o-mini", prompt_tokens=100, completion_tokens=10, cost_usd=(100 * inp + 10 * out) / 2, tier="batch"),
        UsageRow(model="gpt-4o-mini", prompt_tokens=100, completion_tokens=10, cost_usd=0.0, status="cached"),
        UsageRow(model="my-local-model", prompt_tokens=100, completion_tokens=10, cost_usd=0.0),
        UsageRow(model="my-local-model", prompt_tokens=100, completion_tokens=10, cost_usd=0.0, status="cached"),
        UsageRow(model="gpt-4o-mini", status="error", cost_usd=0.0),
    ]
    frame = to_frame(rows)
    saved = saved_usd(frame)
    assert saved[0] == pytest.approx(1500 * inp + 10 * out - 0.0001)
    assert saved[1] == pytest.approx(0.0, abs=1e-15)
    assert saved[2] == pytest.approx((100 * inp + 10 * out) / 2)  # the batch discount
    assert saved[3] == 0.0  # answered from ipyllm's own cache: nothing bought, nothing saved by a price
    assert math.isnan(saved[4]) and math.isnan(saved[5])  # no price: NA, never a made-up 0
    assert math.isnan(saved[6])  # no tokens
    assert list_usd(frame)[0] == pytest.approx(1500 * inp + 10 * out)


def test_prices_aliases_and_per_token_prices_count() -> None:
    frame = to_frame([UsageRow(model="my-deployment", prompt_tokens=1000, completion_tokens=0, cost_usd=0.00001)])
    assert math.isnan(saved_usd(frame)[0])
    assert saved_usd(frame, {"my-deployment": "gpt-4o-mini"})[0] == pytest.approx(
        1000 * rate("gpt-4o-mini", "input_cost_per_token") - 0.00001
    )
    per_token = {"my-deployment": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}
    assert saved_usd(frame, per_token)[0] == pytest.approx(0.001 - 0.00001)


def test_usage_table_sums_the_saving_per_group_and_an_unpriced_group_is_na() -> None:
    inp = rate("gpt-4o-mini", "input_cost_per_token")
    rows = [
        UsageRow(model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=0, cost_usd=600 * inp),
        UsageRow(model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=0, cost_usd=800 * inp),
        UsageRow(model="my-local-model", prompt_tokens=1000, completion_tokens=0, cost_usd=0.0),
    ]
    table = usage_table(to_frame(rows))
    assert table.loc["gpt-4o-mini", "saved_usd"] == pytest.approx(600 * inp)
    assert pd.isna(table.loc["my-local-model", "saved_usd"]) and table["saved_usd"].dtype == "Float64"
    assert table.loc["total", "saved_usd"] == pytest.approx(600 * inp)
    assert usage_table(to_frame([])).loc["total", "saved_usd"] == 0.0


def test_no_litellm_import_in_a_fresh_process() -> None:
    code = (
        "import sys, ipyllm\n"
        "from ipyllm._usage import UsageRow, to_frame\n"
        "from ipyllm._savings import saved_usd\n"
        "saved = saved_usd(to_frame([UsageRow(model='gpt-4o-mini', prompt_tokens=1000, completion_tokens=0, cost_usd=0.0)]))\n"
        "print(saved[0], 'litellm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == [json.dumps(1000 * rate("gpt-4o-mini", "input_cost_per_token")), "False"]
