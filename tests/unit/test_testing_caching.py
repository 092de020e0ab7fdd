"""The stub's prompt caching (``ipyllm.testing._caching``) and its Anthropic Messages API (``_anthropic``), through
litellm over real HTTP: OpenAI's ``cached_tokens`` on a repeated prefix of 1,024 tokens or more (in 128s), none
under it, none once it has lapsed; Anthropic's ``cache_control``: written once, read afterwards, plain and
streamed, nothing under the minimum, errors in Anthropic's form.

The arithmetic is done here from the stub's rule: a message costs 3 tokens for its turn plus its words and
punctuation marks, and 3 more open the reply.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import litellm
import pytest

from ipyllm.testing import Fault, StubServer

SONNET = "anthropic/claude-sonnet-4-5"  # priced in litellm's map, with Anthropic's 1,024-token minimum


def words(n: int, stem: str = "rule") -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


def ask_openai(stub: StubServer, system: str, user: str, **extra: Any) -> Any:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return litellm.completion(model="openai/gpt-4o-mini", api_base=stub.base_url, api_key="sk-stub", messages=messages, **extra)


def cached(response: Any) -> int:
    details = response.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def test_a_repeated_prefix_of_1024_tokens_or_more_is_cached_in_128s(stub: StubServer) -> None:
    stub.prompt_caching = True
    rules = words(1500)
    first = ask_openai(stub, rules, "row one")
    assert first.usage.prompt_tokens == 3 + 1500 + 3 + 2 + 3 and cached(first) == 0, "nothing seen before"
    second = ask_openai(stub, rules, "row two")
    # shared: the system turn (3 + 1,500), the user's turn (3) and "row": 1,507, counted in 128s
    assert cached(second) == 1408 and second.usage.prompt_tokens == first.usage.prompt_tokens
    again = ask_openai(stub, rules, "row two")
    assert cached(again) == (3 + 1500 + 3 + 2 + 3) // 128 * 128 == 1408
    other = ask_openai(stub, words(1500, "other"), "row two")
    assert cached(other) == 0, "another prefix"


def test_a_shared_prefix_under_1024_tokens_is_not_cached_and_the_cache_can_be_off(stub: StubServer) -> None:
    stub.prompt_caching = True
    short = words(1000)  # 3 + 1,000 + 3 + "row" = 1,007 shared tokens
    ask_openai(stub, short, "row one")
    assert cached(ask_openai(stub, short, "row two")) == 0
    stub.prompt_caching = False
    rules = words(1500)
    ask_openai(stub, rules, "row one")
    assert cached(ask_openai(stub, rules, "row two")) == 0


def test_the_cache_forgets_a_prefix_unused_for_its_ttl_and_streams_report_it_too(stub: StubServer) -> None:
    stub.prompt_caching, stub.cache_ttl = True, 0.3
    rules = words(1200)
    ask_openai(stub, rules, "first")
    time.sleep(0.5)
    assert cached(ask_openai(stub, rules, "second")) == 0, "lapsed"
    stream = ask_openai(stub, rules, "third", stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if getattr(chunk, "usage", None)][-1]
    assert usage.prompt_tokens_details.cached_tokens == (3 + 1200 + 3) // 128 * 128 == 1152


def test_the_minimum_is_a_setting(stub: StubServer) -> None:
    stub.prompt_caching, stub.cache_minimum = True, 256
    rules = words(300)
    ask_openai(stub, rules, "row one")
    assert cached(ask_openai(stub, rules, "row two")) == 256  # 3 + 300 + 3 + 1 = 307 shared


# -- Anthropic ------------------------------------------------------------------------------------------------


def ask_anthropic(stub: StubServer, system: str, user: str, mark: bool = True, **extra: Any) -> Any:
    block: dict[str, Any] = {"type": "text", "text": system}
    if mark:
        block["cache_control"] = {"type": "ephemeral"}
    messages = [{"role": "system", "content": [block]}, {"role": "user", "content": user}]
    return litellm.completion(model=SONNET, api_base=stub.url, api_key="sk-ant-test", messages=messages, **extra)


def streamed_usage(stream: Any) -> tuple[str, Any]:
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text, [chunk.usage for chunk in chunks if getattr(chunk, "usage", None)][-1]


def test_anthropic_writes_the_marked_prefix_once_then_reads_it(stub: StubServer) -> None:
    rules = words(1500)
    prefix = 3 + 1500  # the system turn, up to and including the marked block
    first = ask_anthropic(stub, rules, "classify row one")
    assert first.choices[0].message.content == "[claude-sonnet-4-5] classify row one"
    assert first.usage.cache_creation_input_tokens == prefix and first.usage.cache_read_input_tokens == 0
    # litellm adds the cache's tokens to prompt_tokens: input (3 + 3 words + 3) + written
    assert first.usage.prompt_tokens == 3 + 3 + 3 + prefix
    second = ask_anthropic(stub, rules, "classify row two")
    assert second.usage.cache_read_input_tokens == prefix and second.usage.cache_creation_input_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == prefix

    sent = stub.requests_to("/v1/messages")
    assert [r.cache_control_markers for r in sent] == [1, 1]
    assert sent[0].body["system"][0]["cache_control"] == {"type": "ephemeral"} and sent[0].headers["x-api-key"] == "sk-ant-test"
    body = stub.requests[0].body
    assert "cache_control" not in str(body["messages"]), "the marker stays on the shared prefix"


def test_anthropic_streams_with_the_cache_in_its_usage(stub: StubServer) -> None:
    rules = words(1100)
    text, usage = streamed_usage(ask_anthropic(stub, rules, "row one", stream=True, stream_options={"include_usage": True}))
    assert text == "[claude-sonnet-4-5] row one"
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (3 + 1100, 0)
    assert usage.completion_tokens == 11, "[ claude - sonnet - 4 - 5 ] row one"
    assert usage.prompt_tokens == 3 + 2 + 3 + 3 + 1100
    _, usage = streamed_usage(ask_anthropic(stub, rules, "row two", stream=True, stream_options={"include_usage": True}))
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 3 + 1100)


def test_anthropic_caches_nothing_under_the_minimum_or_without_a_marker(stub: StubServer) -> None:
    short = words(1000)  # 1,003 tokens up to the marker
    for _ in range(2):
        reply = ask_anthropic(stub, short, "row")
        assert not reply.usage.cache_creation_input_tokens and not reply.usage.cache_read_input_tokens
        assert reply.usage.prompt_tokens == 3 + 1000 + 3 + 1 + 3
    rules = words(1500)
    for _ in range(2):
        reply = ask_anthropic(stub, rules, "row", mark=False)
        assert not reply.usage.cache_creation_input_tokens and not reply.usage.cache_read_input_tokens
    stub.cache_minimum = 4096  # as Claude Haiku 4.5
    assert not ask_anthropic(stub, rules, "row").usage.cache_creation_input_tokens


def test_anthropic_reads_the_longest_cached_breakpoint_and_writes_the_rest(stub: StubServer) -> None:
    rules, examples = words(1200), words(400, "example")
    ask_anthropic(stub, rules, "row one")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": examples, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "row two"}],
        },
    ]
    reply = litellm.completion(model=SONNET, api_base=stub.url, api_key="sk-ant-test", messages=messages)
    assert reply.usage.cache_read_input_tokens == 3 + 1200
    assert reply.usage.cache_creation_input_tokens == 3 + 400, "from the cached breakpoint to the last one"
    assert stub.requests[-1].cache_control_markers == 2


def test_anthropic_errors_come_in_anthropics_form(stub: StubServer) -> None:
    stub.script(Fault.rate_limit(retry_after=1), Fault.status(400, "prompt is too long"))
    with pytest.raises(litellm.RateLimitError):
        ask_anthropic(stub, "hi", "row", num_retries=0)
    with pytest.raises(litellm.BadRequestError, match="prompt is too long"):
        ask_anthropic(stub, "hi", "row", num_retries=0)
    assert [r.fault for r in stub.requests] == ["status", "status"]

    stub.script(Fault.rate_limit(retry_after=2))
    request = urllib.request.Request(f"{stub.url}/v1/messages", data=json.dumps({"model": "claude-sonnet-4-5", "messages": []}).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "2"
    assert json.load(refused.value) == {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached (stub)"}}
