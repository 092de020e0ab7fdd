"""The key is in no traceback, cause, frame, log or serialisation (issue 10), and a ``Secret`` equals only a ``Secret``
with the same key, never its masked text, and hashes alike (issue 18).

The key here has no recognisable shape (no ``sk-``), so only ipyllm's knowledge of it can hide it, and the
stub server repeats it in its error body, as OpenAI does for a wrong key.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

import ipyllm
from ipyllm import _api
from ipyllm._config import LLMConfig
from ipyllm._litellm import load_litellm
from ipyllm._secrets import RevealedKey, Secret
from ipyllm.testing import Fault, StubServer

from ..conftest import SECRET

#: No recognisable shape: only ipyllm's knowledge of the key can keep it out of sight.
KEY = "zq81Tw0LmVs9pX2kR7bN4cYd"


@pytest.fixture
def keyed(live: StubServer) -> StubServer:
    """The session pointed at the stub server with the shapeless key, and no retries."""
    ipyllm.config.update(api_key=KEY, num_retries=0)
    return live


def leaks(text: str) -> bool:
    return KEY in text or KEY[4:] in text or KEY[:-4] in text


def frame_leaks(exc: BaseException | None) -> list[str]:
    """Every local variable, in every frame an exception (and its chain) passed through, whose repr shows the key."""
    found: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_filename != __file__:  # this test's own frames hold KEY on purpose
                for name, value in frame.f_locals.items():
                    try:
                        shown = repr(value)
                    except Exception:
                        continue
                    if leaks(shown):
                        found.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}:{name}")
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return found


def everything_shown(error: BaseException) -> str:
    """What a user, a log or a notebook can get from an exception without asking for the key."""
    parts = ["".join(traceback.format_exception(error)), str(error), repr(error), repr(vars(error))]
    parts += [repr(error.__cause__), repr(error.__context__)]
    render = getattr(error, "_render_traceback_", None)
    if render is not None:
        parts += render()
    return "\n".join(parts)


# -- serialisation -------------------------------------------------------------------------------------


def test_settings_serialise_without_the_key(clean_config: LLMConfig) -> None:
    clean_config.api_key = KEY
    settings = clean_config.settings()
    dumped = json.dumps(settings)
    assert not leaks(dumped) and f'"api_key": "****{KEY[-4:]}"' in dumped
    assert not leaks(json.dumps(settings, default=str)) and not leaks(repr(settings)) and not leaks(str(settings))
    snapshot = clean_config.snapshot()
    for shown in (repr(snapshot), repr(copy.copy(settings)), repr(copy.deepcopy(settings)), repr(copy.deepcopy(snapshot))):
        assert not leaks(shown)
    assert copy.deepcopy(snapshot).api_key.reveal() == KEY, "a copy still works"
    for value in (clean_config.api_key, settings, snapshot):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(value)
    for copied in (copy.copy(clean_config), copy.deepcopy(clean_config)):
        assert not leaks(repr(copied)) and copied.api_key.reveal() == KEY
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(clean_config)
    assert clean_config.api_key.reveal() == KEY and vars(clean_config.api_key) == {"_key": RevealedKey(KEY)}
    assert not leaks(repr(vars(clean_config.api_key)))


def test_the_masked_secret_still_compares_and_restores() -> None:
    secret = Secret(KEY)
    assert secret == Secret(KEY) and secret != Secret(KEY[::-1]) and hash(secret) == hash(Secret(KEY))
    assert str(secret) == f"{secret}" == "****" + KEY[-4:] and isinstance(secret, str)
    cfg = LLMConfig()
    cfg.update(**{"api_key": secret})  # what restoring saved settings does
    assert cfg.api_key.reveal() == KEY
    revealed = secret.reveal()
    assert str(revealed) == KEY and f"Bearer {revealed}" == f"Bearer {KEY}", "its text is the key, for the provider"
    assert not leaks(repr(revealed)) and not leaks(repr({"api_key": revealed}))


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("status", [401, 403, 400, 500])
def test_an_echoed_key_is_in_no_message_chain_or_row(keyed: StubServer, status: int, stream: bool) -> None:
    keyed.script(Fault.echo_key(status))
    with pytest.raises(ipyllm.LLMError) as caught:
        ipyllm.complete("hello", stream=stream)
    error = caught.value
    assert len(keyed.requests) == 1
    assert keyed.requests[0].headers["authorization"] == f"Bearer {KEY}", "the key itself reached the server"
    assert error.__cause__ is None and error.__context__ is None, "litellm's exception (which holds the key) is not chained"
    assert error.provider_message == "Incorrect API key provided: ****"
    assert f'"{error.provider_message}"' in error.message
    assert not leaks(everything_shown(error))
    assert frame_leaks(error) == []
    row = error.usage
    assert row.status == "error" and not leaks(repr(row)) and not leaks(ipyllm.usage().to_csv())


def test_a_key_from_the_provider_variable_is_removed_too(live: StubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ipyllm.config.update(api_key=None, num_retries=0)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    live.script(Fault.echo_key())
    with pytest.raises(ipyllm.AuthenticationError) as caught:
        ipyllm.complete("hello")
    assert live.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert not leaks(everything_shown(caught.value)) and "****" in caught.value.message


def test_a_timeout_leaves_the_key_in_no_frame(keyed: StubServer) -> None:
    ipyllm.config.timeout = 0.3
    keyed.script(Fault.slow(2))
    with pytest.raises(ipyllm.ProviderUnavailableError) as caught:
        ipyllm.complete("hello")
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert frame_leaks(caught.value) == [] and not leaks(everything_shown(caught.value))


def interrupted(stub: StubServer, call: Any) -> KeyboardInterrupt:
    """Run ``call`` and press Ctrl-C (a real SIGINT, which breaks the blocking read) once the stub holds the request."""
    load_litellm()
    before = len(stub.requests)

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 30
        while len(stub.requests) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # inside the slow answer: every frame down to the socket read is on the stack
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        call()
    except KeyboardInterrupt as interrupt:
        presser.join()
        return interrupt
    raise AssertionError("the call was not interrupted")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_ctrl_c_during_a_slow_call_leaves_the_key_in_no_frame(keyed: StubServer, stream: bool) -> None:
    keyed.script(Fault.slow(5))
    interrupt = interrupted(keyed, lambda: ipyllm.complete("hello", stream=stream))
    # Interrupted inside litellm and httpx (the stub held the request), not before...
    assert len(keyed.requests) == 1 and _api.session.ledger.rows()[-1].attempts == 1
    # ...yet the one-line Interrupted is raised afresh: litellm's frames are not even in its traceback.
    names = [frame.name for frame in traceback.extract_tb(interrupt.__traceback__)]
    assert "completion" not in names and "handle_request" not in names
    assert interrupt.__context__ is None and interrupt.__cause__ is None
    assert frame_leaks(interrupt) == []
    assert not leaks("".join(traceback.format_exception(interrupt)))
    assert _api.session.ledger.rows()[-1].status == "interrupted"


def test_the_frame_check_finds_a_plain_key(keyed: StubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: were the key handed to litellm as a plain str, the walk above would find it."""
    monkeypatch.setattr(Secret, "reveal", lambda self: str.__str__(self._key))
    keyed.script(Fault.slow(5))
    interrupt = interrupted(keyed, lambda: ipyllm.complete("hello"))
    assert frame_leaks(interrupt) != []


# -- logs ----------------------------------------------------------------------------------------------


@pytest.fixture
def every_log_line() -> Iterator[list[logging.LogRecord]]:
    """Every record of every logger, at DEBUG, whatever level the logger itself is set to."""
    load_litellm()  # sets litellm's loggers' levels, which this fixture must restore as they were
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "openai", "httpx")),
    ]
    old = [(lg, lg.level) for lg in loggers]
    logging.getLogger().setLevel(logging.DEBUG)
    for lg in loggers:
        lg.addHandler(handler)
    yield records
    for lg, level in old:
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_no_log_line_carries_the_key(keyed: StubServer, every_log_line: list[logging.LogRecord], capfd: pytest.CaptureFixture[str]) -> None:
    ipyllm.config.num_retries = 1
    ipyllm.config.update(retry_min_wait=0, retry_max_wait=0)
    keyed.script(Fault.echo_key(), Fault.status(500, "down"), Fault.echo_key(403))
    for stream in (False, True):
        with pytest.raises(ipyllm.LLMError):
            ipyllm.complete("hello", stream=stream)
    ipyllm.complete("fine", stream=True)
    litellm = load_litellm()
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.CRITICAL, "ipyllm keeps litellm's loggers quiet"
    assert litellm.suppress_debug_info is True
    assert every_log_line, "the capture works: httpx and openai log at DEBUG"
    for record in every_log_line:
        assert not leaks(record.getMessage()), record.name
    out, err = capfd.readouterr()
    assert not leaks(out + err)


# -- the key: == and hash agree ---------------------------------------------------------------------------------


def test_a_secret_equals_only_a_secret_with_the_same_key_and_hashes_alike() -> None:
    secret = Secret(SECRET)
    same = Secret(SECRET)
    masked = str(secret)
    assert masked == "****" + SECRET[-4:]
    # == compares the keys: equal secrets hash equal.
    assert secret == same and hash(secret) == hash(same) and len({secret, same}) == 1
    assert {secret: 1}[same] == 1
    # Another key with the same last four characters: the same masked text, not the same secret.
    twin = Secret("another-key-of-the-same-length.7f3a9c")
    assert str(twin) == masked and twin != secret
    # A secret never equals its masked text (either way round), nor the key as a plain string.
    assert secret != masked and masked != secret and not (secret == masked) and not (masked == secret)
    assert secret != SECRET and SECRET != secret
    assert masked not in [secret] and secret not in [masked] and masked not in {secret} and secret not in {masked}
    assert secret == Secret(secret), "a Secret made from a Secret keeps its key"
    assert Secret(SECRET) in {same} and [secret].index(same) == 0
