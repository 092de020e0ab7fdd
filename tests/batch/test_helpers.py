"""``ipyllm.map(..., processes=N)``: attempts sent from helper processes over real HTTP to the stub server.

The helper is a real Python child running ``ipyllm._helpers.serve`` with its own litellm; what it raises comes back
as litellm's own exception, so the retry policy, Retry-After, the error messages and the key's secrecy are
the same as for a call made here.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm import _api, _helpers
from ipyllm.errors import AuthenticationError, SettingError
from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET
from ..helpers import ROOT, chat_requests, wait_until


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_helpers.Helper]:
    """The session's helper process, started once for the module (importing litellm takes seconds), working in a
    temporary directory (it inherits this process's)."""
    from ipyllm._litellm import load_litellm

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("helper"))
        (started,) = _helpers.helpers(1)
    load_litellm()  # here too, meanwhile: an interrupt must not land in the import
    assert started.ready.wait(120), "the helper process did not get ready"
    yield started
    _helpers.close_all()


def test_a_helper_imports_only_what_it_runs(tmp_path: Path) -> None:
    """Not the package's ``__init__`` and the API behind it: a helper's litellm import starts at once."""
    boot = _helpers._BOOT.replace("serve()", "print(sorted(name for name in sys.modules if name.startswith('ipyllm')))")
    package = str(Path(_helpers.__file__).parent)
    shown = subprocess.run([sys.executable, "-c", boot, package], capture_output=True, text=True, cwd=tmp_path, check=True, timeout=60)
    assert shown.stdout.split() == ["['ipyllm',", "'ipyllm._helpers',", "'ipyllm._litellm']"]
    assert "serve()" in _helpers._BOOT


def one_attempt(helper: _helpers.Helper, waits: list[float], prompt: str = "hello") -> Any:
    """One ``achat`` whose attempts all go through the helper; retry waits recorded (and slept briefly)."""
    from ipyllm._engine import as_messages

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    settings, _ = _api.session.split_overrides({})
    record = _api.session.recorder("api")
    return asyncio.run(_api.session.client.achat(settings, as_messages(prompt, None), report=record, send=helper.acompletion, sleep=sleep))


def test_map_over_two_processes_answers_every_row_once(fast: StubServer, helper: _helpers.Helper) -> None:
    fast.delay = 0.05
    items = [f"item {i}" for i in range(80)]
    before = helper.sent
    result = ipyllm.map("{value}", items, concurrency=8, processes=2, progress=False)
    assert list(result) == [f"[gpt-4o-mini] item {i}" for i in range(80)]
    assert len(chat_requests(fast)) == 80, "one request per row, wherever it was sent from"
    by_helper = helper.sent - before
    assert 0 < by_helper < 80, f"the helper sent {by_helper} of 80: both processes should have worked"
    rows = ipyllm.usage()
    assert len(rows) == 80 and set(rows["status"]) == {"ok"} and rows["cost_usd"].notna().all()
    assert (rows["prompt_tokens"] > 0).all() and not rows["tokens_estimated"].any()


def test_a_429_in_the_helper_is_retried_after_its_retry_after(fast: StubServer, helper: _helpers.Helper) -> None:
    fast.script(Fault.status(429, retry_after=2))
    waits: list[float] = []
    reply = one_attempt(helper, waits)
    assert reply == "[gpt-4o-mini] hello"
    assert reply.usage.attempts == 2 and len(chat_requests(fast)) == 2
    assert len(waits) == 1 and waits[0] >= 2, f"Retry-After (2 s) read from the helper's exception: waited {waits}"


def test_an_error_in_the_helper_is_explained_here_without_the_key(fast: StubServer, helper: _helpers.Helper) -> None:
    fast.script(Fault.echo_key(401))
    with pytest.raises(AuthenticationError) as raised:
        one_attempt(helper, [])
    assert "refused the API key (401)" in str(raised.value)
    for text in (str(raised.value), raised.value.provider_message or "", repr(raised.value)):
        assert SECRET not in text
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert raised.value.usage is not None and raised.value.usage.status == "error"


def test_ctrl_c_cancels_the_helpers_calls_and_the_rerun_sends_only_the_missing_rows(fast: StubServer, helper: _helpers.Helper) -> None:
    fast.delay = 0.25
    items = [f"item {i}" for i in range(40)]
    before = helper.sent
    timer = threading.Timer(0.9, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(ipyllm.BatchInterrupted) as raised:
            ipyllm.map("{value}", items, concurrency=4, processes=2, progress=False)
    finally:
        timer.cancel()
    assert helper.sent > before, "the helper took part"
    answered = int(raised.value.result.notna().sum())
    assert 0 < answered < 40
    rows = ipyllm.usage()
    assert (rows["status"] == "interrupted").sum() >= 1 and (rows["status"] == "ok").sum() == answered
    assert helper.in_flight == 0, "no attempt is waited for here"
    wait_until(lambda: helper.running() == 0, 2, "the helper's calls cancelled there too")
    time.sleep(0.5)  # cancelled requests already on the wire still reach the server; nothing is sent after
    sent_before = len(chat_requests(fast))

    resumed = ipyllm.map("{value}", items, concurrency=4, processes=2, progress=False)
    assert resumed.notna().all()
    assert len(chat_requests(fast)) - sent_before == 40 - answered


def test_cancelling_a_call_cancels_it_in_the_helper(fast: StubServer, helper: _helpers.Helper) -> None:
    from ipyllm._engine import as_messages

    fast.script(Fault.slow(10))
    settings, _ = _api.session.split_overrides({})

    async def main() -> None:
        call = asyncio.ensure_future(
            _api.session.client.achat(settings, as_messages("slow", None), report=_api.session.recorder("api"), send=helper.acompletion)
        )
        while not chat_requests(fast):
            await asyncio.sleep(0.02)
        assert helper.running() == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    started = time.monotonic()
    asyncio.run(main())
    deadline = time.monotonic() + 2
    while helper.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper.running() == 0, "the helper still runs the cancelled attempt"
    assert time.monotonic() - started < 5
    assert list(ipyllm.usage()["status"]) == ["interrupted"]


def test_an_attempt_cancelled_as_soon_as_it_is_sent_ends_in_the_helper(fast: StubServer, helper: _helpers.Helper) -> None:
    # The cancel often reaches the helper before the attempt has taken its first step (a Ctrl-C right after a
    # row went out): such a task never runs its body, and was once counted as running for ever.
    fast.delay = 5
    for _ in range(20):
        message = [{"role": "user", "content": "x"}]
        kwargs = {"model": "openai/gpt-4o-mini", "messages": message, "api_key": "sk-test", "base_url": fast.url, "max_retries": 0}
        ident, _answer = helper._ask("call", kwargs)
        helper.pending.pop(ident)
        _helpers._send(helper.process.stdin, ("cancel", ident, None), helper._lock)
    wait_until(lambda: helper.running() == 0, 2, "the 20 cancelled attempts to end (each would take 5 s)")


def test_a_helper_that_dies_fails_its_call_and_gets_no_more(fast: StubServer) -> None:
    dying = _helpers.Helper()
    try:
        assert dying.ready.wait(120)
        fast.script(Fault.slow(10))
        waits: list[float] = []
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                one_attempt(dying, waits)
            except BaseException as error:
                outcome.append(error)

        worker = threading.Thread(target=call, daemon=True)  # should it hang, the failure below says so, and pytest still exits
        worker.start()
        deadline = time.monotonic() + 10
        while not chat_requests(fast) and time.monotonic() < deadline:
            time.sleep(0.05)
        dying.process.kill()
        worker.join(20)
        assert not worker.is_alive()
        assert outcome and isinstance(outcome[0], ipyllm.LLMError), outcome
        assert not dying.alive
        spread = _helpers.Spread(lambda **kwargs: asyncio.sleep(0, "here"), 0)
        spread.helpers = [dying]
        assert asyncio.run(spread(model="x")) == "here" and spread.here == 1
    finally:
        dying.close()


@pytest.mark.parametrize("processes", [0, -1, 1.5, "2", True])
def test_processes_must_be_a_whole_number(fast: StubServer, processes: Any) -> None:
    with pytest.raises(SettingError, match="processes must be a whole number of at least 1"):
        ipyllm.map("{value}", ["a"], processes=processes, progress=False)
    assert chat_requests(fast) == []


def test_the_map_magic_takes_processes(ip: Any, live: StubServer, helper: _helpers.Helper) -> None:
    live.delay = 0.05
    ip.user_ns["items"] = [f"item {i}" for i in range(24)]
    before = helper.sent
    ip.run_cell_magic("llm", "--map items -o out --concurrency 6 --processes 2", "Say {value}")
    assert list(ip.user_ns["out"]) == [f"[gpt-4o-mini] Say item {i}" for i in range(24)]
    assert helper.sent > before, "the helper took part"
    assert len(chat_requests(live)) == 24


def test_a_map_that_names_no_processes_takes_the_setting(ip: Any, fast: StubServer, helper: _helpers.Helper) -> None:
    fast.delay = 0.05
    ipyllm.config.processes = 2
    before = helper.sent
    result = ipyllm.map("{value}", [f"row {i}" for i in range(40)], concurrency=8, progress=False)
    assert list(result) == [f"[gpt-4o-mini] row {i}" for i in range(40)]
    assert helper.sent > before, "the setting's helper took part"
    before = helper.sent
    ipyllm.map("{value}", [f"here {i}" for i in range(20)], concurrency=8, processes=1, progress=False)
    assert helper.sent == before, "processes=1, named: this process only"
    ip.user_ns["items"] = [f"cell {i}" for i in range(24)]
    ip.run_cell_magic("llm", "--map items -o out --concurrency 6", "Say {value}")
    assert list(ip.user_ns["out"]) == [f"[gpt-4o-mini] Say cell {i}" for i in range(24)]
    assert helper.sent > before, "%%llm --map without --processes: the setting's helper took part"
    assert len(chat_requests(fast)) == 84


_EARLY = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ipyllm")
import ipyllm
from ipyllm import _helpers
seen = {"at_load": len(_helpers._helpers)}
if sys.argv[1] == "environment":
    # LLM_PROCESSES=2: %load_ext started one helper, which gets ready with no map; the first map uses it.
    pids = [helper.pid for helper in _helpers._helpers if helper.ready.wait(120)]
    ipyllm.config.update(base_url=sys.argv[2], api_key="sk-early", usage_db=sys.argv[3])
    result = ipyllm.map("{value}", [f"item {i}" for i in range(24)], concurrency=6, progress=False)
    seen.update(ready=len(pids), result=list(result), sent=sum(helper.sent for helper in _helpers._helpers),
                same=[helper.pid for helper in _helpers._helpers] == pids)
else:
    # No variable: none at %load_ext; raising the setting starts one; after %unload_ext, raising it starts none.
    shell.run_line_magic("llm_config", "processes=2")
    seen["raised"] = len(_helpers._helpers)
    shell.run_line_magic("unload_ext", "ipyllm")
    ipyllm.config.processes = 3
    seen["unloaded"] = len(_helpers._helpers)
print(json.dumps(seen))
"""


@pytest.mark.parametrize("how", ["environment", "raised"])
def test_the_processes_setting_starts_its_helpers_before_the_first_map(live: StubServer, tmp_path: Path, how: str) -> None:
    """Each helper imports litellm (seconds): started with ``%load_ext`` or when the setting is raised, it is ready
    by the time the notebook gets to its map."""
    env = {name: value for name, value in os.environ.items() if name != "LLM_PROCESSES"}
    env["PYTHONPATH"] = str(ROOT)
    if how == "environment":
        env["LLM_PROCESSES"] = "2"
    usage = str(tmp_path / "usage.sqlite")
    done = subprocess.run(
        [sys.executable, "-c", _EARLY, how, live.base_url, usage], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if how == "environment":
        assert seen["at_load"] == 1 and seen["ready"] == 1, "%load_ext started the helper; it got ready with no map"
        assert seen["result"] == [f"[gpt-4o-mini] item {i}" for i in range(24)]
        assert seen["sent"] > 0 and seen["same"], "the map sent through that helper, and started no other"
        assert len(chat_requests(live)) == 24
    else:
        assert (seen["at_load"], seen["raised"], seen["unloaded"]) == (0, 1, 1)


def test_a_helper_still_importing_is_stopped_at_once_when_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that exits (or a script that ends) right after ``%load_ext`` with ``LLM_PROCESSES=2`` does not wait for
    a helper that is still importing litellm and has no call to finish: here one that would take a minute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_helpers, "_BOOT", "import time; time.sleep(60)")
    monkeypatch.setattr(_helpers.Helper, "CLOSE_WAIT", 60.0)
    helper = _helpers.Helper()
    closing = threading.Thread(target=helper.close)
    closing.start()
    closing.join(20)
    assert not closing.is_alive(), "close waited for a helper that was not ready"
    assert helper.process.returncode == -9 and not helper.alive


def test_a_fresh_process_sends_through_the_ready_helper_before_its_own_litellm_is_imported(live: StubServer, tmp_path: Path) -> None:
    """In a fresh kernel both litellm imports run at once; calls start with whichever is ready first. Here this
    process's import is held back (its lock taken) until the map has sent every row through the helper: the rows
    still have their provider, tokens and price, and pandas (seconds to import) waited for the end. The tokenizers
    (a second of CPU beside the calls) are left to load when a count first needs them."""
    code = textwrap.dedent(
        f"""
        import json, sys, threading
        import ipyllm
        from ipyllm import _helpers, _litellm
        ipyllm.config.update(base_url={live.base_url!r}, api_key="sk-fresh", usage_db={str(tmp_path / "usage.sqlite")!r})
        sent = []
        calls = _helpers.Helper.acompletion

        async def recorded(self, **kwargs):
            sent.append((_litellm.litellm_loaded(), "pandas" in sys.modules))
            return await calls(self, **kwargs)

        _helpers.Helper.acompletion = recorded
        _litellm._import_lock.acquire()  # this process's litellm cannot import until the rows are sent
        (helper,) = _helpers.helpers(1)
        assert helper.ready.wait(120)
        result = ipyllm.map("{{value}}", [f"item {{i}}" for i in range(6)], concurrency=3, processes=2, progress=False)
        _litellm._import_lock.release()
        rows = ipyllm.usage()
        for thread in threading.enumerate():
            if thread.name == "ipyllm-warm-up":
                thread.join(120)
        import tiktoken.registry
        print(json.dumps({{
            "result": list(result), "sent": sent, "index": type(result.index).__name__,
            "tokenizers": sorted(tiktoken.registry.ENCODINGS),
            "rows": rows[["status", "provider", "prompt_tokens"]].astype(str).values.tolist(),
            "priced": bool(rows["cost_usd"].gt(0).all()),
        }}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["result"] == [f"[gpt-4o-mini] item {i}" for i in range(6)] and answer["index"] == "RangeIndex"
    assert answer["sent"] == [[False, False]] * 6, "every row went out through the helper, before litellm and pandas here"
    assert [row[:2] for row in answer["rows"]] == [["ok", "openai"]] * 6 and all(int(row[2]) > 0 for row in answer["rows"])
    assert answer["priced"], "priced by the helper's litellm"
    assert answer["tokenizers"] == [], "the warm-up left the tokenizers alone while the batch sent"
    assert len(chat_requests(live)) == 6
