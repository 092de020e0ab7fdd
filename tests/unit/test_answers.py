"""Empty answers (issue 17): the same answer streamed or not, said in one line, never cached; zero choices and
empty streams are errors, or asked again (issue 10).

A real server (llama.cpp) can answer with no text and ``finish_reason: stop``: that is an answer (``ok``,
``''``), whether it came streamed or not, with one note on stderr. A stream that broke (nothing at all, or
no finish reason) is asked again without streaming; what then fails keeps the tokens the server reported.
Errors name the endpoint one way: ``base_url`` when set, else the provider.

Over real HTTP to the stub server; where the stub cannot send a finish reason (``length``, ``content_filter``,
none), litellm's answer from the stub is restamped on its way back (``restamped``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.utils.capture import capture_output
from pydantic import BaseModel

import ipyllm
from ipyllm import _api
from ipyllm._calls import cache_key
from ipyllm._engine import Client
from ipyllm._litellm import load_litellm
from ipyllm._store import MemoryLedger
from ipyllm.testing import Fault, StubServer, count_tokens

from ..conftest import SleepRecorder
from ..helpers import chat_requests, fails, one_line

#: What the stub reports for the prompt "hello": its words, plus 3 for the message and 3 for the reply.
HELLO_TOKENS = count_tokens("hello") + 3 + 3
STOP_NOTE = (
    "ipyllm: gpt-4o-mini answered with no text (finish reason: stop); run again, or rephrase the prompt (the empty reply is not cached)"
)


class Answer(BaseModel):
    word: str


def notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ipyllm: ")]


# -- the same answer, streamed or not ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_empty_answer_with_a_stop_is_ok_streamed_or_not(live: StubServer, stream: bool, capsys: pytest.CaptureFixture[str]) -> None:
    live.script(Fault.reply(""))
    pieces: list[str] = []
    reply = ipyllm.complete("hello", stream=stream, on_text=pieces.append)
    assert str(reply) == "" and pieces == []
    row = reply.usage
    assert (row.status, row.error, row.attempts) == ("ok", None, 1)
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (HELLO_TOKENS, 0, False), "the server's own count"
    assert [r.body.get("stream", False) for r in chat_requests(live)] == [stream], "one request: a stream that finished is not asked again"
    assert notes(capsys.readouterr().err) == [STOP_NOTE]
    assert reply.note == STOP_NOTE.removeprefix("ipyllm: ")
    assert _api.session.ledger.rows() == [row]


def test_an_empty_stream_without_usage_is_ok_and_counted_locally(live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    """llama.cpp sends no usage in streams: the empty answer is still an answer, its prompt counted locally."""
    live.usage_in_stream = False
    live.script(Fault.reply(""))
    reply = ipyllm.complete("hello", stream=True)
    row = reply.usage
    assert (str(reply), row.status, row.attempts, row.completion_tokens, row.tokens_estimated) == ("", "ok", 1, 0, True)
    assert row.prompt_tokens is not None and row.prompt_tokens > 0
    assert len(chat_requests(live)) == 1 and notes(capsys.readouterr().err) == [STOP_NOTE]


def test_acomplete_says_an_empty_answer_once_too(live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    live.script(Fault.reply(""))
    reply = asyncio.run(ipyllm.acomplete("hello"))
    assert (str(reply), reply.usage.status, reply.usage.prompt_tokens) == ("", "ok", HELLO_TOKENS)
    assert notes(capsys.readouterr().err) == [STOP_NOTE]


def test_a_broken_stream_is_asked_again_and_an_empty_answer_then_is_ok(live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: no chunk at all (llama.cpp's over-long prompt), then an empty answer with a stop."""
    live.script(Fault.empty_stream(), Fault.reply(""))
    pieces: list[str] = []
    reply = ipyllm.complete("hello", stream=True, on_text=pieces.append)
    assert [r.body.get("stream", False) for r in chat_requests(live)] == [True, False]
    row = reply.usage
    assert (str(reply), row.status, row.attempts, row.prompt_tokens) == ("", "ok", 2, HELLO_TOKENS)
    assert pieces == [], "nothing to show: no empty piece either"
    assert notes(capsys.readouterr().err) == [STOP_NOTE]


# -- never cached ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_empty_answer_is_not_cached(live: StubServer, stream: bool) -> None:
    ipyllm.config.cache = True
    live.script(Fault.reply(""))
    assert ipyllm.complete("hello", stream=stream) == ""
    key = _api.session.prepare_chat("hello", {}, source="api").key
    assert key is not None and _api.session.records.cache_get(key) is None, "nothing was written to the cache"
    again = ipyllm.complete("hello", stream=stream)
    assert str(again) == "[gpt-4o-mini] hello" and again.usage.status == "ok", "asked again, not answered from the cache"
    third = ipyllm.complete("hello", stream=stream)
    assert (str(third), third.usage.status) == ("[gpt-4o-mini] hello", "cached"), "a real answer is cached as before"
    assert len(chat_requests(live)) == 2


def test_acomplete_does_not_cache_an_empty_answer(live: StubServer) -> None:
    ipyllm.config.cache = True
    live.script(Fault.reply(""))

    async def twice() -> list[ipyllm.Reply]:
        return [await ipyllm.acomplete("hello"), await ipyllm.acomplete("hello")]

    first, second = asyncio.run(twice())
    assert (str(first), str(second), second.usage.status) == ("", "[gpt-4o-mini] hello", "ok")
    assert _api.session.records.cache_get(_api.session.prepare_chat("hello", {}, source="api").key or "") is not None, (
        "the real answer is cached"
    )
    assert len(chat_requests(live)) == 2


def test_an_empty_answer_an_earlier_version_cached_is_asked_again(live: StubServer) -> None:
    ipyllm.config.cache = True
    request = _api.session.prepare_chat("hello", {}, source="api")
    assert request.key is not None
    _api.session.records.cache_put(
        request.key, "chat", "gpt-4o-mini", {"text": "", "prompt_tokens": 7, "completion_tokens": 0, "provider": "openai"}
    )
    reply = ipyllm.complete("hello")
    assert (str(reply), reply.usage.status, len(chat_requests(live))) == ("[gpt-4o-mini] hello", "ok", 1)


def test_map_keeps_an_empty_answer_out_of_the_cache_and_says_so_once(live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    ipyllm.config.update(retry_min_wait=0.05, retry_max_wait=1)
    live.script(Fault.reply(""))  # the first row's answer (concurrency 1)
    result = ipyllm.map("say {value}", ["a", "b"], concurrency=1, progress=False)
    assert result.tolist() == ["", "[gpt-4o-mini] say b"]
    keys = [cache_key("chat", ipyllm.config.snapshot(), [{"role": "user", "content": f"say {v}"}], {}) for v in "ab"]
    assert list(_api.session.records.cache_get_many(keys)) == [keys[1]], "only the answer with text is kept for a resume"
    assert [r.status for r in _api.session.ledger.rows()] == ["ok", "ok"]
    assert notes(capsys.readouterr().err) == [
        "ipyllm: 1 of 2 rows got an empty answer, e.g. gpt-4o-mini answered with no text (finish reason: stop): not cached; "
        "run the same map again to ask them again"
    ]
    again = ipyllm.map("say {value}", ["a", "b"], concurrency=1, progress=False)
    assert again.tolist() == ["[gpt-4o-mini] say a", "[gpt-4o-mini] say b"]
    assert [r.body["messages"][-1]["content"] for r in chat_requests(live)] == ["say a", "say b", "say a"], (
        "only the empty row is sent again"
    )
    assert [r.status for r in _api.session.ledger.rows()[2:]] == ["ok", "cached"]
    assert notes(capsys.readouterr().err) == []


def test_map_with_a_schema_counts_an_empty_answer_as_a_reply_that_does_not_fit(
    live: StubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ipyllm.config.update(retry_min_wait=0.05, retry_max_wait=1)
    live.script(Fault.reply(""))
    result = ipyllm.map("word: {value}", ["a", "b"], schema=Answer, concurrency=1, progress=False)
    assert result["word"].isna().tolist() == [True, False]
    said = notes(capsys.readouterr().err)
    assert len(said) == 1 and "invalid_output" in said[0] and "empty answer" not in said[0], said


# -- the magic -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ["", "--no-stream"], ids=["streamed", "plain"])
def test_the_cell_magic_shows_an_empty_answer_with_its_footer_and_one_note(ip: Any, live: StubServer, options: str) -> None:
    live.script(Fault.reply(""))
    with capture_output() as captured:
        ip.run_cell(f"%%llm {options}\nhello")
    shown = [o.data for o in captured.outputs]
    assert shown and all(bundle["text/plain"].strip() for bundle in shown), "no empty output, not even for a moment"
    assert shown[-1]["text/plain"].strip().startswith("gpt-4o-mini · ") and shown[-1]["text/plain"].endswith("· empty reply")
    assert notes(captured.stderr) == [STOP_NOTE] and "Error" not in captured.stdout + captured.stderr
    row = _api.session.ledger.rows()[-1]
    assert (row.source, row.status, row.attempts, row.prompt_tokens) == ("magic", "ok", 1, HELLO_TOKENS)
    assert len(chat_requests(live)) == 1


def test_the_line_magic_returns_an_empty_answer_and_keeps_its_note(ip: Any, live: StubServer) -> None:
    live.script(Fault.reply(""))
    with capture_output() as captured:
        ip.run_cell("answer = %llm hello")
    assert ip.user_ns["answer"] == "" and captured.outputs == []
    assert notes(captured.stderr) == [STOP_NOTE]


# -- finish reasons the stub does not send ------------------------------------------------------------------------


def restamped(finish: str | None) -> Callable[..., Any]:
    """litellm's completion against the stub, its answer's finish reason replaced by ``finish`` (None: none sent)."""
    litellm = load_litellm()

    def completion(**kwargs: Any) -> Any:
        response = litellm.completion(**kwargs)
        if not kwargs.get("stream"):
            response.choices[0].finish_reason = finish
            return response

        def chunks() -> Iterator[Any]:
            for chunk in response:
                for choice in chunk.choices:
                    if choice.finish_reason:
                        choice.finish_reason = finish
                yield chunk

        return chunks()

    return completion


@pytest.fixture
def restamp(live: StubServer, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], None]:
    def use(finish: str | None) -> None:
        monkeypatch.setattr(
            _api,
            "session",
            _api.Session(
                config=ipyllm.config, ledger=MemoryLedger(), client=Client(completion=restamped(finish), sleep=sleeps), id=_api.SESSION_ID
            ),
        )

    return use


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_output_cap_spent_before_any_text_is_an_answer_that_says_so(
    live: StubServer, restamp: Callable[[str | None], None], stream: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    restamp("length")
    live.script(Fault.reply(""))
    reply = ipyllm.complete("hello", stream=stream)
    assert (str(reply), reply.usage.status, reply.usage.attempts, reply.usage.prompt_tokens) == ("", "ok", 1, HELLO_TOKENS)
    assert notes(capsys.readouterr().err) == [
        "ipyllm: gpt-4o-mini answered with no text: it reached its output cap (finish reason: length) before writing any, "
        "as hidden reasoning can; raise max_tokens (the empty reply is not cached)"
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_answer_withheld_by_a_content_filter_is_an_error_with_the_servers_tokens(
    live: StubServer, restamp: Callable[[str | None], None], stream: bool
) -> None:
    restamp("content_filter")
    live.script(Fault.reply(""))
    with pytest.raises(ipyllm.RequestRejectedError) as caught:
        ipyllm.complete("hello", stream=stream)
    assert one_line(caught.value) == (
        f"RequestRejectedError: {live.base_url} withheld the reply under its content policy (finish reason: content_filter): "
        "rephrase the prompt"
    )
    row = caught.value.usage
    assert (row.status, row.attempts, row.prompt_tokens, row.completion_tokens) == ("error", 1, HELLO_TOKENS, 0)
    assert len(chat_requests(live)) == 1


def test_an_empty_reply_after_the_re_ask_is_an_error_with_the_servers_tokens(
    live: StubServer, restamp: Callable[[str | None], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """No finish reason streamed (a stream that broke) nor plain: an error, its row with the re-asked answer's tokens."""
    restamp(None)
    live.script(Fault.reply(""), Fault.reply(""))
    with pytest.raises(ipyllm.LLMError) as caught:
        ipyllm.complete("hello", stream=True)
    line = one_line(caught.value)
    assert line == f"LLMError: {live.base_url} sent an empty reply, streamed and not: try again, or another model"
    row = caught.value.usage
    assert (row.status, row.attempts, row.prompt_tokens, row.completion_tokens) == ("error", 2, HELLO_TOKENS, 0)
    assert [r.body.get("stream", False) for r in chat_requests(live)] == [True, False]
    assert notes(capsys.readouterr().err) == []


# -- tokens kept on every error path ---------------------------------------------------------------------------------


def test_zero_choices_after_a_broken_stream_keep_the_servers_tokens(live: StubServer) -> None:
    live.script(Fault.empty_stream(), Fault.zero_choices())
    with pytest.raises(ipyllm.LLMError) as caught:
        ipyllm.complete("hello", stream=True)
    assert one_line(caught.value) == f"LLMError: {live.base_url} answered with no reply (zero choices): try again, or another model"
    row = caught.value.usage
    assert (row.status, row.attempts, row.prompt_tokens, row.completion_tokens) == ("error", 2, 5, 0), (
        "the stub reports 5 with zero choices"
    )


@pytest.mark.parametrize("reply", ["", "not json"], ids=["empty", "not-json"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_reply_that_does_not_fit_the_schema_keeps_the_servers_tokens(
    live: StubServer, stream: bool, reply: str, capsys: pytest.CaptureFixture[str]
) -> None:
    live.script(Fault.reply(reply))
    with pytest.raises(ipyllm.InvalidOutputError) as caught:
        ipyllm.complete("hello", schema=Answer, stream=stream)
    row = caught.value.usage
    assert row is not None and (row.status, row.attempts, row.tokens_estimated) == ("ok", 1, False)
    assert (row.prompt_tokens, row.completion_tokens) == (HELLO_TOKENS, count_tokens(reply)), "the server's own count"
    assert notes(capsys.readouterr().err) == [], "the error says it; no note besides"


# -- one name for the endpoint -------------------------------------------------------------------------------------


def test_errors_name_base_url_when_set_and_the_provider_otherwise(live: StubServer) -> None:
    ipyllm.config.num_retries = 0
    live.script(Fault.status(503, "down"), Fault.zero_choices())
    with pytest.raises(ipyllm.ProviderUnavailableError) as unavailable:
        ipyllm.complete("hello")
    with pytest.raises(ipyllm.LLMError) as empty:
        ipyllm.complete("hello")
    assert one_line(unavailable.value).startswith(f"ProviderUnavailableError: {live.base_url} failed with 503 after 1 attempt")
    assert one_line(empty.value).startswith(f"LLMError: {live.base_url} answered with no reply (zero choices)")
    # Without base_url (the server's address passed to litellm for this call only), the provider is named.
    ipyllm.config.base_url = None
    live.script(Fault.status(503, "down"), Fault.zero_choices())
    with pytest.raises(ipyllm.ProviderUnavailableError) as unavailable:
        ipyllm.complete("hello", api_base=live.base_url)
    with pytest.raises(ipyllm.LLMError) as empty:
        ipyllm.complete("hello", api_base=live.base_url)
    assert one_line(unavailable.value).startswith("ProviderUnavailableError: openai failed with 503 after 1 attempt")
    assert one_line(empty.value).startswith("LLMError: openai answered with no reply (zero choices)")
    assert len(chat_requests(live)) == 4


# -- zero choices and empty streams (issue 10) ------------------------------------------------------------------


CONTEXT_400 = Fault.status(400, "the request exceeds the available context size, try increasing it", error_type="exceed_context_size_error")


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
