"""Budgets that assume nothing: every call under a budget carries an output cap it can pay for, and holds it.

Over real HTTP to the stub server, which cuts replies at ``max_tokens`` / ``max_completion_tokens`` (finish
reason ``length``) as providers do, and writes long replies on request (``reply_tokens``). gpt-4o-mini's
prices apply: $0.15 per 1M input tokens, $0.60 per 1M output tokens, at most 16,384 output tokens a call.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api
from ipyllm._budget import INPUT_MARGIN, MIN_OUTPUT_TOKENS, Need
from ipyllm._litellm import load_litellm
from ipyllm.testing import Fault, StubServer

from ..helpers import ROOT, run_threads

INPUT, OUTPUT = 0.15e-6, 0.60e-6
#: A dollar figure as the refusal line writes it.
USD = r"\$([0-9.]+)"
REFUSAL = re.compile(
    rf"^budget: spent {USD}(?:, {USD} held by (\d+) calls? in flight,)? of {USD} (?:this session|today); "
    rf"this call needs at least {USD} \(its input and \d+ output tokens?\): raise \w+ to go on$"
)


def test_the_prices_are_gpt_4o_minis() -> None:
    entry = load_litellm().model_cost["gpt-4o-mini"]
    assert (entry["input_cost_per_token"], entry["output_cost_per_token"], entry["max_output_tokens"]) == (INPUT, OUTPUT, 16_384)


def sent_cap(request: Any) -> int | None:
    body = request.body
    return body.get("max_tokens") or body.get("max_completion_tokens")


# -- the arithmetic ------------------------------------------------------------------------------------------


def test_the_cap_is_what_the_headroom_pays_for_after_the_input() -> None:
    need = Need(input_cost=0.0005, output_cost_per_token=OUTPUT, ceiling=16_384)
    amount, cap = need.fit(0.002) or (None, None)
    # (0.002 - 0.0005 * 1.1) / 0.0000006 = 2,416.67: 2,416 tokens.
    assert cap == 2_416 and amount == pytest.approx(0.0005 * INPUT_MARGIN + 2_416 * OUTPUT) and amount <= 0.002
    # Never above the model's maximum or the user's own cap; the user's cap stays when it fits.
    assert need.fit(1.0) == (pytest.approx(0.00055 + 16_384 * OUTPUT), 16_384)
    assert Need(0.0005, OUTPUT, user_cap=100, ceiling=100).fit(1.0) == (pytest.approx(0.00055 + 100 * OUTPUT), 100)
    # Too little left for the input and 16 output tokens: refused; a user's smaller cap is the least worth sending.
    assert need.fit(0.00055 + 15 * OUTPUT) is None and need.fit(0.00055 + 16 * OUTPUT) is not None
    assert Need(0.0005, OUTPUT, user_cap=5, ceiling=5).fit(0.00055 + 5 * OUTPUT) is not None
    assert need.fit(0.0004) is None, "less than the input alone"
    assert MIN_OUTPUT_TOKENS == 16


# -- one call -------------------------------------------------------------------------------------------------


#: A prompt whose echo runs to over 3,000 tokens (words that differ: litellm stops a stream repeating one piece).
LONG = "Repeat after me: " + " ".join(f"w{i}" for i in range(3_000))


@pytest.mark.parametrize("stream", [False, True])
def test_a_long_reply_under_a_budget_spends_at_most_the_budget(live: StubServer, stream: bool, capfd: pytest.CaptureFixture[str]) -> None:
    ipyllm.config.budget_usd = 0.002
    guess = ipyllm.estimate(LONG)
    assert guess.input_cost + 3_000 * OUTPUT > 0.002, "uncut, the reply alone would pass the budget"
    reply = ipyllm.complete(LONG, stream=stream)
    (request,) = live.requests
    cap = sent_cap(request)
    # The request carried the cap the budget could pay for after the prompt, not the model's 16,384.
    assert cap == int((0.002 - guess.input_cost * INPUT_MARGIN) / OUTPUT)
    assert reply.usage.completion_tokens == cap < 3_000
    assert reply.usage.cost_usd <= 0.002 and ipyllm.usage()["cost_usd"].sum() <= 0.002
    # The reply says it was cut: its finish reason, its footer, and one line naming the budget.
    assert reply.finish_reason == "length" and reply.cut == f"cut at {cap:,} tokens by budget_usd"
    assert reply._repr_mimebundle_()["text/markdown"].endswith(f"· cut at {cap:,} tokens by budget_usd</sub>")
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"ipyllm: the reply was cut at {cap:,} output tokens: all that budget_usd ($0.0020, $0.0020 left before this call) could "
        "pay for after the prompt; raise budget_usd for the whole reply"
    ]


def test_without_a_budget_no_cap_is_added(live: StubServer) -> None:
    live.reply_tokens = 3_000
    reply = ipyllm.complete("Tell me everything about otters.")
    assert sent_cap(live.requests[0]) is None and reply.usage.completion_tokens == 3_000
    assert reply.finish_reason == "stop" and reply.cut is None


def test_a_reply_that_fits_under_its_cap_is_not_marked(live: StubServer, capfd: pytest.CaptureFixture[str]) -> None:
    ipyllm.config.budget_usd = 1.0
    reply = ipyllm.complete("short")
    assert sent_cap(live.requests[0]) == 16_384, "the model's own maximum: the budget could pay for more"
    assert reply.finish_reason == "stop" and reply.cut is None and capfd.readouterr().err == ""


def test_a_cut_reply_is_not_cached(live: StubServer) -> None:
    ipyllm.config.update(budget_usd=0.002, cache=True)
    assert ipyllm.complete(LONG).finish_reason == "length"
    ipyllm.config.budget_usd = 1.0
    whole = ipyllm.complete(LONG)
    assert len(live.requests) == 2, "asked again, with room for the whole reply"
    assert whole.finish_reason == "stop" and whole.usage.completion_tokens > 3_000
    assert ipyllm.complete(LONG).usage.status == "cached", "a whole reply is cached as before"


def test_a_reasoning_model_is_capped_with_max_completion_tokens(live: StubServer) -> None:
    live.reply_tokens = 3_000
    ipyllm.config.update(budget_usd=0.01, model="o3-mini")
    reply = ipyllm.complete("Think about otters.")
    body = live.requests[0].body
    assert "max_tokens" not in body and 0 < body["max_completion_tokens"] < 3_000
    assert reply.finish_reason == "length" and reply.usage.cost_usd <= 0.01


def test_the_magic_shows_the_cut_in_the_footer(ip: Any, live: StubServer) -> None:
    ipyllm.config.budget_usd = 0.002
    ip.user_ns["long"] = LONG
    with capture_output() as captured:
        ip.run_cell_magic("llm", "", "{long}")
    final = captured.outputs[-1].data["text/markdown"]
    assert re.search(r"· cut at [\d,]+ tokens by budget_usd</sub>$", final), final[-200:]
    assert "the reply was cut at" in captured.stderr and "raise budget_usd for the whole reply" in captured.stderr
    assert ipyllm.usage()["cost_usd"].sum() <= 0.002


# -- many threads ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["budget_usd", "daily_budget_usd"])
def test_32_threads_of_long_replies_never_pass_a_budget(live: StubServer, tmp_path: Path, setting: str) -> None:
    live.reply_tokens = 3_000  # $0.0018 a reply when nothing cuts it: 32 of them would be $0.058
    live.delay = 0.2  # every call is in flight while the others decide
    ipyllm.config.update(usage_db=str(tmp_path / "usage.sqlite"), **{setting: 0.01})
    outcomes = run_threads(32, "Tell me everything about otters")
    frame = ipyllm.usage()
    assert frame["cost_usd"].sum() <= 0.01
    assert all(sent_cap(request) is not None for request in live.requests), "every request carried a cap"
    assert 1 <= len(live.requests) == (frame["status"] == "ok").sum()
    refused = [o for o in outcomes if o is not None]
    assert refused and all(isinstance(o, ipyllm.BudgetExceededError) for o in refused)
    assert all(REFUSAL.match(o.message) for o in refused), [o.message for o in refused if not REFUSAL.match(o.message)][:1]  # type: ignore[attr-defined]
    assert _api.session.budgets.held == 0


def test_the_refusal_line_says_what_is_spent_and_what_is_held(live: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    ipyllm.config.update(usage_db=str(ledger), daily_budget_usd=0.008)
    live.reply_tokens = 2_000
    ipyllm.complete("Tell me everything about otters")  # $0.0012 of output: spent
    live.script(Fault.slow(1.5))
    slow = threading.Thread(target=ipyllm.complete, args=("Tell me more about otters",))
    slow.start()  # in flight, holding the worst case the rest of the budget allows
    try:
        deadline = time.monotonic() + 10
        while _api.session.budgets.held == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ipyllm.BudgetExceededError) as refused:
            ipyllm.complete("And about beavers?")
        with sqlite3.connect(ledger) as connection:
            spent = connection.execute("SELECT SUM(cost_usd) FROM usage").fetchone()[0]
            held, holds = connection.execute("SELECT SUM(amount), COUNT(*) FROM holds").fetchone()
    finally:
        slow.join(30)
    match = REFUSAL.match(refused.value.message)
    assert match, refused.value.message
    shown_spent, shown_held, shown_holds, limit = float(match[1]), float(match[2]), int(match[3]), float(match[4])
    assert (shown_spent, shown_held, shown_holds, limit) == (
        pytest.approx(spent, abs=0.00005),
        pytest.approx(held, abs=0.00005),
        holds,
        0.008,
    )
    assert holds == 1 and spent == pytest.approx(ipyllm.usage()["cost_usd"].iloc[0])
    assert refused.value.refusal.spent == pytest.approx(spent) and refused.value.refusal.held == pytest.approx(held)


# -- a map ----------------------------------------------------------------------------------------------------

TEXTS = [f"Summarise text {i}: " + "otters hold hands while they sleep " * 40 for i in range(100)]


def test_a_map_over_long_texts_spends_at_most_its_daily_budget(live: StubServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "usage.sqlite"
    live.reply_tokens = 5_000  # $0.003 a reply: the budget pays for about 16 of the 100
    live.delay = 0.05
    ipyllm.config.update(usage_db=str(ledger), daily_budget_usd=0.05)
    result = ipyllm.map("{value}", TEXTS, concurrency=8, progress=False)
    with sqlite3.connect(ledger) as connection:
        spent = connection.execute("SELECT SUM(cost_usd) FROM usage").fetchone()[0]
        assert connection.execute("SELECT COUNT(*) FROM holds").fetchone()[0] == 0
    assert spent <= 0.05 and ipyllm.usage()["cost_usd"].sum() == pytest.approx(spent)
    answered = int(result.notna().sum())
    assert answered >= 10, "the budget was used, not refused wholesale while holds were in flight"
    assert answered == len(live.requests) and all(sent_cap(r) is not None for r in live.requests)
    batch = ipyllm.last_batch()
    assert batch is not None and batch.tally.not_sent == 100 - answered
    # The refusal line, once every call of the batch had ended: its spent is the ledger's, nothing is held.
    assert batch.budget_message is not None
    match = REFUSAL.match(batch.budget_message)
    assert match and match[2] is None and float(match[1]) == pytest.approx(spent, abs=0.00005), batch.budget_message
    err = capfd.readouterr().err
    assert f"{100 - answered} of 100 rows not sent" in err
    assert (ipyllm.usage()["status"] == "over_budget").sum() == 1


def test_a_map_with_helper_processes_spends_at_most_its_daily_budget(live: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    live.reply_tokens = 5_000
    live.delay = 0.3
    ipyllm.config.update(usage_db=str(ledger), daily_budget_usd=0.05)
    result = ipyllm.map("{value}", TEXTS, concurrency=8, processes=2, progress=False)
    with sqlite3.connect(ledger) as connection:
        spent = connection.execute("SELECT SUM(cost_usd) FROM usage").fetchone()[0]
    assert spent <= 0.05 and result.notna().sum() >= 10


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import ipyllm
    settings, go, texts = json.loads(sys.argv[1])
    ipyllm.config.update(**settings)
    ipyllm._litellm.load_litellm()
    Path(go + ".ready." + str(__import__("os").getpid())).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    result = ipyllm.map("{value}", texts, concurrency=8, progress=False)
    print(json.dumps({"answered": int(result.notna().sum()), "message": ipyllm.last_batch().budget_message}))
    """
)


def test_two_processes_mapping_on_one_ledger_spend_at_most_its_daily_budget(stub: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    stub.reply_tokens, stub.delay = 5_000, 0.05
    settings = {"base_url": stub.base_url, "api_key": "sk-worker", "usage_db": str(ledger), "daily_budget_usd": 0.05, "timeout": 30}
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps([settings, str(go), TEXTS[part::2]])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for part in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    with sqlite3.connect(ledger) as connection:
        spent, sent = connection.execute("SELECT SUM(cost_usd), SUM(status = 'ok') FROM usage").fetchone()
        assert connection.execute("SELECT COUNT(*) FROM holds").fetchone()[0] == 0
    assert spent <= 0.05 and sent == sum(r["answered"] for r in results) == len(stub.requests) >= 10
    assert all(r["message"] and REFUSAL.match(r["message"]) for r in results), results
