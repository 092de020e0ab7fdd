"""Failures told true, in one line (issue 10): what the provider said and what to do next; a missing key found
before anything is sent.

Over real HTTP to the stub server; each case asserts the one-line message, the requests the server
received, the usage row, and that the key is nowhere in what is shown. The rest of issue 10's failures are
with their modules: zero choices and empty streams in test_answers.py, bad input in test_validate.py, retry
timing in test_retry.py.
"""

from __future__ import annotations

from typing import Any

import pytest

import ipyllm
from ipyllm import _api
from ipyllm._litellm import load_litellm
from ipyllm.testing import Fault, StubServer

from ..conftest import SleepRecorder
from ..helpers import fails, one_line

# -- what the provider said, and what to do --------------------------------------------------------------


def test_a_permanent_5xx_keeps_the_servers_words_and_is_not_retried(live: StubServer, sleeps: SleepRecorder) -> None:
    live.script(*[Fault.permanent("Llama model must be created with embedding=True")] * 3)
    with pytest.raises(ipyllm.ProviderUnavailableError) as caught:
        ipyllm.embed("hello")
    line = one_line(caught.value)
    assert '"Llama model must be created with embedding=True"' in line and "not retried" in line and "try again later" not in line
    assert caught.value.provider_message == "Llama model must be created with embedding=True"
    assert len(live.requests) <= 3, "litellm's embedding retries beneath (at most 3 requests), ipyllm adds none"
    assert sleeps.waits == [] and caught.value.usage.attempts == 1 and caught.value.usage.status == "error"


@pytest.mark.parametrize("code", [501, 505])
def test_501_and_505_are_permanent(live: StubServer, sleeps: SleepRecorder, code: int) -> None:
    live.script(Fault.status(code, "no such thing here"))
    line = one_line(fails(ipyllm.ProviderUnavailableError, "hello"))
    assert f"cannot serve this request ({code}" in line and '"no such thing here"' in line
    assert len(live.requests) == 1 and sleeps.waits == []


def test_a_transient_5xx_keeps_the_servers_words_after_its_retries(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.num_retries = 2
    live.script(*[Fault.status(503, "upstream llama is loading the model")] * 3)
    line = one_line(fails(ipyllm.ProviderUnavailableError, "hello"))
    assert line.startswith(f"ProviderUnavailableError: {live.base_url} failed with 503 after 3 attempts")
    assert '"upstream llama is loading the model"' in line and "try again later" in line
    assert len(live.requests) == 3 and len(sleeps.waits) == 2


@pytest.mark.parametrize(
    ("code", "words"),
    [(504, "answered 504 gateway timeout after 2 attempts"), (408, "answered 408 request timeout after 2 attempts")],
)
def test_504_and_408_are_the_servers_timeouts_not_ours(live: StubServer, sleeps: SleepRecorder, code: int, words: str) -> None:
    ipyllm.config.num_retries = 1
    live.script(Fault.status(code), Fault.status(code))
    line = one_line(fails(ipyllm.ProviderUnavailableError, "hello"))
    assert words in line and "raise timeout" not in line and "within" not in line
    assert len(live.requests) == 2


def test_our_own_read_timeout_says_to_raise_timeout(live: StubServer) -> None:
    ipyllm.config.update(timeout=0.3, num_retries=0)
    live.script(Fault.slow(1.5))
    line = one_line(fails(ipyllm.ProviderUnavailableError, "hello"))
    assert "no answer within 0.3 s after 1 attempt" in line and "raise timeout (LLM_TIMEOUT)" in line


def test_a_stream_that_breaks_before_any_text_says_so(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.num_retries = 1
    live.script(Fault.break_stream(0), Fault.break_stream(0))
    line = one_line(fails(ipyllm.ProviderUnavailableError, "one two three", stream=True))
    assert "broke before any text after 2 attempts" in line and "could not connect" not in line
    assert len(live.requests) == 2


def test_the_repeated_chunk_guard_is_named(live: StubServer) -> None:
    pieces: list[str] = []
    with pytest.raises(ipyllm.StreamBrokenError) as caught:
        ipyllm.complete("loop " * 150, stream=True, on_text=pieces.append)
    error = caught.value
    line = one_line(error)
    assert "litellm's repeated-chunk guard stopped the reply" in line and "server error" not in line
    assert error.partial == "".join(pieces) and error.partial.startswith("[gpt-4o-mini] loop")
    assert error.usage.status == "error" and len(live.requests) == 1


def test_a_missing_key_of_any_provider_is_found_before_sending(
    session: _api.Session, clean_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    sent: list[Any] = []
    monkeypatch.setattr(load_litellm(), "completion", lambda **kwargs: sent.append(kwargs))
    with pytest.raises(ipyllm.MissingKeyError) as caught:
        ipyllm.complete("hello", model="anthropic/claude-3-5-haiku-latest")
    line = one_line(caught.value)
    assert line == "MissingKeyError: no API key for anthropic: set LLM_API_KEY or ANTHROPIC_API_KEY, or ipyllm.config.api_key"
    assert sent == [], "nothing was sent"
    row = caught.value.usage
    assert (row.status, row.attempts, row.provider) == ("error", 0, "anthropic")


def test_a_missing_embedding_key_is_found_before_sending(session: _api.Session, clean_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sent: list[Any] = []
    monkeypatch.setattr(load_litellm(), "embedding", lambda **kwargs: sent.append(kwargs))
    with pytest.raises(ipyllm.MissingKeyError, match="no API key for openai: set LLM_API_KEY or OPENAI_API_KEY") as caught:
        ipyllm.embed("hello")
    assert sent == [] and (caught.value.usage.kind, caught.value.usage.attempts) == ("embedding", 0)
