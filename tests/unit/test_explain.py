"""Failures told true, in one line (issue 10): provider errors, empty answers, bad input, retry timing.

Over real HTTP to the stub server; each case asserts the one-line message, the requests the server
received (0 for bad input), the usage row, and that the key is nowhere in what is shown.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import ipyllm
from ipyllm import _api, _retry
from ipyllm._litellm import load_litellm
from ipyllm.testing import Fault, StubServer

from ..conftest import SleepRecorder
from ..helpers import ROOT, fails, one_line

CONTEXT_400 = Fault.status(400, "the request exceeds the available context size, try increasing it", error_type="exceed_context_size_error")


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


# -- empty answers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "error", "words"),
    [
        ("content_filter", ipyllm.RequestRejectedError, "no reply (zero choices) (finish reason: content_filter): rephrase the prompt"),
        ("", ipyllm.LLMError, "no reply (zero choices): try again"),
    ],
)
def test_zero_choices_are_an_error_not_an_empty_reply(live: StubServer, finish: str, error: type, words: str) -> None:
    live.script(Fault.zero_choices(finish))
    caught = fails(error, "hello")
    assert words in one_line(caught)
    row = caught.usage
    assert (row.status, row.attempts, row.prompt_tokens) == ("error", 1, 5), "the provider's reported tokens are kept"
    assert len(live.requests) == 1 and _api.session.ledger.rows() == [row]


def test_a_streamed_zero_choice_answer_is_an_error(live: StubServer) -> None:
    ipyllm.config.num_retries = 0
    live.script(Fault.zero_choices("content_filter"))
    caught = fails(ipyllm.LLMError, "hello", stream=True)
    assert "before any text" in one_line(caught) and caught.usage.status == "error"


def test_an_empty_stream_is_asked_again_without_streaming(live: StubServer) -> None:
    pieces: list[str] = []
    reply = ipyllm.complete("hello there", stream=True, on_text=pieces.append)
    assert str(reply) == "[gpt-4o-mini] hello there"
    live.reset()
    live.script(Fault.empty_stream())
    reply = ipyllm.complete("hello again", stream=True, on_text=pieces.append)
    assert str(reply) == "[gpt-4o-mini] hello again" and pieces[-1] == str(reply)
    assert [r.body.get("stream", False) for r in live.requests] == [True, False]
    assert reply.usage.attempts == 2 and reply.usage.status == "ok"


def test_an_empty_stream_and_an_empty_answer_are_an_error(live: StubServer) -> None:
    live.script(Fault.empty_stream(), Fault.zero_choices())
    caught = fails(ipyllm.LLMError, "hello", stream=True)
    assert "no reply (zero choices)" in one_line(caught)
    assert (caught.usage.status, caught.usage.attempts) == ("error", 2) and len(live.requests) == 2


def test_a_streamed_prompt_past_the_context_window_gets_the_same_error_as_a_plain_one(live: StubServer) -> None:
    """llama.cpp answers a streamed over-long prompt with 200 and an empty body, a plain one with a 400."""
    live.script(CONTEXT_400)
    plain = fails(ipyllm.RequestRejectedError, "a long prompt", model="openai/llama")
    live.script(Fault.empty_stream(), CONTEXT_400)
    streamed = fails(ipyllm.RequestRejectedError, "a long prompt", model="openai/llama", stream=True)
    assert one_line(streamed) == one_line(plain)
    assert "the prompt is longer than openai/llama's context window" in plain.message
    assert '"the request exceeds the available context size, try increasing it"' in plain.message
    assert [r.body.get("stream", False) for r in live.requests] == [False, True, False]
    assert [(r.status, r.attempts) for r in _api.session.ledger.rows()] == [("error", 1), ("error", 2)]


# -- bad input: refused before anything is sent -------------------------------------------------------------

BAD_PROMPTS = [
    (None, "the prompt is None: pass a prompt string, or a list of messages"),
    (123, "the prompt is int: pass a prompt string"),
    (b"hello", "the prompt is bytes: decode it first"),
    (["hi"], "message 0 is str 'hi': each message is a dict like {'role': 'user', 'content': 'Hello'}"),
    ({"role": "user", "content": "hi"}, "the prompt is one message (a dict): pass a list of messages"),
    ("", "the prompt is empty"),
    ("   \n", "the prompt is empty"),
    ([], "the list of messages is empty"),
    ([{"role": "user"}], "message 0 (user) has no 'content'"),
    ([{"content": "hi"}], "message 0 has no 'role': give one of system, user, assistant"),
    ([{"role": "wizard", "content": "hi"}], "message 0 has the unknown role 'wizard'"),
    ([{"role": "usr", "content": "hi"}], "unknown role 'usr': did you mean 'user'?"),
    ([{"role": "user", "content": 5}], "message 0 (user) has content of type int"),
    ("caf\udce9.txt", "message 0 (user) cannot be sent as UTF-8: position 3 holds '\\udce9', a lone surrogate"),
    ([{"role": "user", "content": [{"type": "text", "text": "x\ud800"}]}], "message 0 (user), part 0 cannot be sent as UTF-8: position 1"),
]


@pytest.mark.parametrize(("prompt", "words"), BAD_PROMPTS, ids=[repr(p)[:30] for p, _ in BAD_PROMPTS])
def test_bad_prompts_are_refused_before_sending(live: StubServer, prompt: Any, words: str) -> None:
    caught = fails(ipyllm.InvalidInputError, prompt)
    assert words in one_line(caught)
    assert isinstance(caught, TypeError) and isinstance(caught, ValueError) and isinstance(caught, ipyllm.LLMError)
    assert live.requests == [] and _api.session.ledger.rows() == [], "nothing sent, no row"


def test_a_surrogate_in_the_system_prompt_is_found_too(live: StubServer) -> None:
    ipyllm.config.system = "Files: caf\udce9"
    assert "message 0 (system) cannot be sent as UTF-8: position 10" in one_line(fails(ipyllm.InvalidInputError, "hi"))
    assert live.requests == []


BAD_TEXTS = [
    (None, "the texts to embed are None: pass a string, or a list of strings"),
    ([], "nothing to embed (an empty list)"),
    (["ok", 3], "text 1 is int, not a string"),
    (["ok", " "], "text 1 is empty"),
    (b"x", "the texts to embed are bytes"),
    (["caf\udce9"], "text 0 cannot be sent as UTF-8: position 3"),
]


@pytest.mark.parametrize(("texts", "words"), BAD_TEXTS, ids=[repr(t)[:20] for t, _ in BAD_TEXTS])
def test_bad_texts_to_embed_are_refused_before_sending(live: StubServer, texts: Any, words: str) -> None:
    with pytest.raises(ipyllm.InvalidInputError) as caught:
        ipyllm.embed(texts)
    assert words in one_line(caught.value)
    assert live.requests == [] and _api.session.ledger.rows() == []


@pytest.mark.parametrize(
    ("keywords", "words"),
    [
        ({"max_token": 5}, "complete() got the unknown keyword 'max_token': did you mean max_tokens?"),
        ({"temprature": 0.1}, "did you mean temperature?"),
        ({"top_k": 5}, "send provider-specific extras as extra_body={'top_k': ...}"),
        ({"dry_run": True}, "dry_run is not a keyword of complete (it would be sent): use ipyllm.estimate("),
    ],
)
def test_unknown_keywords_are_refused_with_the_close_match(live: StubServer, keywords: dict[str, Any], words: str) -> None:
    assert words in one_line(fails(ipyllm.InvalidInputError, "x", **keywords))
    assert live.requests == [] and _api.session.ledger.rows() == []


def test_embed_checks_its_keywords_against_embeddings(live: StubServer) -> None:
    with pytest.raises(ipyllm.InvalidInputError, match=re.escape("embed() got the unknown keyword 'dimension': did you mean dimensions?")):
        ipyllm.embed("x", dimension=4)
    ipyllm.embed("x", dimensions=4)
    assert live.requests[0].body["dimensions"] == 4


def test_known_keywords_and_extra_body_reach_the_server(live: StubServer) -> None:
    ipyllm.complete("x", top_p=0.5, seed=7, extra_body={"min_p": 0.05, "top_k": 40}, metadata={"run": "a"})
    body = live.requests[0].body
    assert (body["top_p"], body["seed"], body["min_p"], body["top_k"]) == (0.5, 7, 0.05, 40)
    assert "metadata" not in body, "litellm's own arguments stay with litellm"


def test_a_setting_of_the_wrong_type_is_one_line(clean_config: Any) -> None:
    with pytest.raises(ipyllm.SettingError) as caught:
        ipyllm.config.prices = "x"
    assert caught.value._render_traceback_() == [
        "SettingError: prices must be a dict {model: base_model} or {model: {'input_cost_per_token': x, 'output_cost_per_token': y}} "
        "(got 'x'); the old value stays."
    ]
    assert ipyllm.config.prices == {}


# -- retry timing, over HTTP ---------------------------------------------------------------------------------


def test_retry_after_never_lowers_the_wait_below_the_floor(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=3, retry_min_wait=0.3, retry_max_wait=5)
    live.script(*[Fault.rate_limit(retry_after=0)] * 3)
    ipyllm.complete("hello")
    assert len(sleeps.waits) == 3 and all(wait >= 0.3 for wait in sleeps.waits), sleeps.waits
    assert len(live.requests) == 4


def test_retry_after_raises_the_wait_and_is_capped(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=2, retry_min_wait=0.1, retry_max_wait=4)
    live.script(Fault.rate_limit(retry_after=3), Fault.rate_limit(retry_after=100))
    ipyllm.complete("hello")
    assert sleeps.waits[0] >= 3 and sleeps.waits[1] == 4


def test_waits_grow_between_the_floor_and_a_doubling_cap(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=5, retry_min_wait=1, retry_max_wait=10)
    live.script(*[Fault.status(503)] * 5)
    ipyllm.complete("hello")
    assert len(sleeps.waits) == 5
    for retry, wait in enumerate(sleeps.waits, start=1):
        assert 1 <= wait <= min(10, 2**retry), (retry, wait)


def test_the_first_retry_is_jittered(live: StubServer, sleeps: SleepRecorder) -> None:
    ipyllm.config.update(num_retries=1, retry_min_wait=1, retry_max_wait=60)
    for _ in range(4):
        live.script(Fault.status(503))
        ipyllm.complete("hello")
    assert len(sleeps.waits) == 4 and all(1 <= wait <= 2 for wait in sleeps.waits)
    assert len(set(sleeps.waits)) == 4, "concurrent callers do not retry in lockstep"


def test_the_wait_policy_in_isolation() -> None:
    lowest = _retry.wait_retry_after(2, 30, draw=lambda low, high: low)
    highest = _retry.wait_retry_after(2, 30, draw=lambda low, high: high)
    assert [highest.cap(n) for n in range(1, 6)] == [4, 8, 16, 30, 30]
    assert lowest.cap(1) == 4 and lowest.min_wait == 2
    zero = _retry.wait_retry_after(0, 10)
    assert [zero.cap(n) for n in range(1, 5)] == [1, 2, 4, 8], "a zero floor still backs off"


def test_the_docs_state_the_formula_the_code_uses() -> None:
    page = (ROOT / "docs" / "errors.md").read_text()
    assert "uniform over [retry_min_wait, min(retry_max_wait, retry_min_wait * 2**n)]" in page
    assert "max(r, that draw)" in page
