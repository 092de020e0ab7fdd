"""One logical model call through litellm: arguments, the retry policy, streaming, tokens and cost.

What a call cost (and what one would cost) is worked out in ``_cost``; its names are re-exported here.

litellm is imported on first use (its import takes seconds), with its price map read from the bundled
copy unless the user chose otherwise, and with its banners off. The client knows nothing of pandas or
IPython: every call hands exactly one ``UsageRow`` to its ``report`` callback, whatever the outcome, and
the layer above decides where the row goes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from ipyllm._answers import broken_message, empty_note, endpoint, finish_reason, has_answer, one_choice, streamed_finish
from ipyllm._config import Settings
from ipyllm._cost import (
    cached_tokens,
    call_cost,
    provider_usage,
    usage_field,
)
from ipyllm._display import footer, render
from ipyllm._explain import check_key, explain, provider_words
from ipyllm._litellm import NO_RETRIES, caps_completion_tokens, load_litellm, provider_chunks, resolve_provider, unlogged
from ipyllm._retry import RetryNote, async_retrying, retrying
from ipyllm._usage import UsageRow
from ipyllm.errors import (
    Interrupted,
    LLMError,
    StreamBrokenError,
)

__all__ = ["Client", "Embeddings", "Reply", "as_messages"]

Messages = list[dict[str, Any]]
Report = Callable[[UsageRow], Any]


class Reply(str):
    """A model's reply: ``str()`` is the text; ``.usage`` is the call's usage row.

    Also carries ``.messages`` (what was sent) and ``.response`` (litellm's raw response).
    """

    usage: UsageRow
    messages: Messages
    response: Any
    #: How Jupyter shows the reply: markdown, text, code, json or html.
    display_format: str
    #: With ``schema=``: the validated object (a pydantic model instance, or the decoded JSON).
    parsed: Any = None
    #: Why an answer has no text (the model ended it with no text, saying why), on one line; None otherwise.
    note: str | None = None
    #: Why the model stopped, as the provider said: ``stop``, ``length`` (the output cap), ``tool_calls``, ...
    finish_reason: str | None = None
    #: Set when a budget's output cap cut the reply short: ``cut at 2,583 tokens by budget_usd`` (in the footer).
    cut: str | None = None

    def __new__(cls, text: str, usage: UsageRow, messages: Messages | None = None, response: Any = None) -> Reply:
        reply = super().__new__(cls, text)
        reply.usage = usage
        reply.messages = messages or []
        reply.response = response
        reply.display_format = "markdown"
        return reply

    @property
    def text(self) -> str:
        return str.__str__(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        empty = "" if self.text else " · empty reply"
        return render(self.text, self.display_format, footer(self.usage, self.cut) + empty)


class Embeddings(list[list[float]]):
    """One vector per input text; ``.usage`` is the call's usage row."""

    usage: UsageRow

    def __init__(self, vectors: Sequence[list[float]], usage: UsageRow) -> None:
        super().__init__(vectors)
        self.usage = usage


def as_messages(prompt_or_messages: str | Sequence[dict[str, Any]], system: str | None) -> Messages:
    """A prompt becomes one user message; the session's system prompt goes first unless one is there."""
    if isinstance(prompt_or_messages, str):
        messages: Messages = [{"role": "user", "content": prompt_or_messages}]
    else:
        messages = [dict(m) for m in prompt_or_messages]
    if system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


@dataclass
class _Call:
    """What the retry loop needs to know about the call it runs."""

    kind: str
    model: str
    settings: Settings
    row: UsageRow
    start: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: The model as litellm is asked for it (``azure/<deployment>`` for Azure embeddings).
    target: str = ""
    #: Neither a session key nor a server address: the provider's own variable must hold the key.
    check_key: bool = False
    #: The streamed text so far (counted and kept when the call is interrupted), and whether it was shown.
    received: list[str] = field(default_factory=list)
    shown: bool = False

    def collect(self, on_text: Callable[[str], Any] | None) -> Callable[[str], Any]:
        """``on_text``, also keeping each piece in ``received``."""
        self.shown = on_text is not None

        def receive(piece: str) -> None:
            self.received.append(piece)
            if on_text is not None:
                on_text(piece)

        return receive

    #: An embedding call's input, counted locally when the provider reports no usage.
    texts: list[str] | None = None
    #: Why the answer has no text (``empty_note``), for the reply.
    note: str | None = None

    @property
    def provider(self) -> str | None:
        """The provider litellm resolved."""
        return self.row.provider

    @property
    def where(self) -> str:
        """The endpoint, as every error names it."""
        return endpoint(self.settings.base_url, self.row.provider)


class Client:
    """Runs calls through litellm with ipyllm's retry policy.

    Parameters
    ----------
    completion, embedding, acompletion
        Stand-ins for ``litellm.completion`` / ``litellm.embedding`` / ``litellm.acompletion`` (tests inject them).
    sleep
        How retry waits are spent (tests inject a recorder instead of sleeping).
    """

    def __init__(
        self,
        completion: Callable[..., Any] | None = None,
        embedding: Callable[..., Any] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.perf_counter,
        acompletion: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self._completion = completion
        self._acompletion = acompletion
        self._embedding = embedding
        self.sleep = sleep
        self.clock = clock

    # -- public ----------------------------------------------------------------------------------------
    def chat(
        self,
        settings: Settings,
        messages: Messages,
        *,
        report: Report,
        stream: bool = False,
        on_text: Callable[[str], Any] | None = None,
        on_retry: Callable[[RetryNote], Any] | None = None,
        extra: dict[str, Any] | None = None,
        cap: int | None = None,
    ) -> Reply:
        """One chat call, retried; ``on_text`` receives each streamed piece; ``cap`` is a budget's output cap."""
        litellm = load_litellm()
        kwargs = self._chat_arguments(settings, messages, extra, cap)
        completion = self._completion or litellm.completion
        call = self._begin("chat", settings.model, settings)
        call.check_key = self._completion is None and "api_key" not in kwargs and "api_base" not in kwargs
        on_text = call.collect(on_text)

        def attempt() -> Any:
            if not stream:
                response = one_choice(completion(**kwargs), call.where)
                call.note = empty_note(response, finish_reason(response), call.model, call.where)
                return response
            response, finish = self._stream_once(completion, kwargs, on_text)
            if response is not None and (finish is not None or has_answer(response)):
                # Text, or none with a finish reason: the same answer as without streaming.
                call.note = empty_note(response, finish, call.model, call.where)
                return response
            # A stream with nothing, or nothing and no finish reason, broke: llama.cpp sends an empty 200 for a prompt
            # longer than its context window. Asked again without streaming (one more request, counted as an attempt),
            # the server says why.
            call.row.attempts += 1
            again = one_choice(completion(**kwargs), call.where)
            call.note = empty_note(again, finish_reason(again), call.model, call.where, streamed=response, reasked=True)
            if on_text is not None and (text := again.choices[0].message.content):
                on_text(text)
            return again

        response = self._run(call, attempt, on_retry, report, messages)
        return self._reply(call, messages, response)

    def embed(
        self,
        settings: Settings,
        texts: list[str],
        *,
        report: Report,
        on_retry: Callable[[RetryNote], Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Embeddings:
        """One embeddings call, retried (Azure: the ``embedding_deployment`` with ``api_version``)."""
        litellm = load_litellm()
        model = settings.embedding_model
        target = f"azure/{settings.embedding_deployment}" if settings.embedding_deployment else model
        kwargs = self._common_arguments(settings, target)
        kwargs["max_retries"] = NO_RETRIES
        kwargs["input"] = texts
        kwargs.update(extra or {})
        embedding = self._embedding or litellm.embedding
        call = self._begin("embedding", model, settings, target)
        call.check_key = self._embedding is None and "api_key" not in kwargs and "api_base" not in kwargs
        call.texts = texts
        response = self._run(call, lambda: embedding(**kwargs), on_retry, report, None)
        vectors = [item["embedding"] if isinstance(item, dict) else item.embedding for item in response.data]
        return Embeddings(vectors, call.row)

    async def achat(
        self,
        settings: Settings,
        messages: Messages,
        *,
        report: Report,
        on_retry: Callable[[RetryNote], Any] | None = None,
        extra: dict[str, Any] | None = None,
        around_attempt: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        send: Callable[..., Awaitable[Any]] | None = None,
        cap: int | None = None,
    ) -> Reply:
        """``chat`` without blocking the event loop (not streamed): ``litellm.acompletion`` under the same policy.

        Each attempt runs inside ``around_attempt()`` when given (a batch's rate-limit pause and its limit
        on requests in flight); retry waits are spent with ``sleep`` (``asyncio.sleep`` by default); each
        attempt is sent with ``send`` (``litellm.acompletion`` by default; a batch's ``_helpers.Spread``).
        Cancelling the task records an ``interrupted`` row.
        """
        litellm = load_litellm()
        kwargs = self._chat_arguments(settings, messages, extra, cap)
        acompletion = self._acompletion or send or litellm.acompletion
        call = self._begin("chat", settings.model, settings)
        call.check_key = self._acompletion is None and "api_key" not in kwargs and "api_base" not in kwargs

        async def attempt() -> Any:
            if around_attempt is None:
                response = one_choice(await acompletion(**kwargs), call.where)
            else:
                async with around_attempt():
                    response = one_choice(await acompletion(**kwargs), call.where)
            call.note = empty_note(response, finish_reason(response), call.model, call.where)
            return response

        import asyncio

        response = await self._arun(call, attempt, on_retry, report, messages, sleep or asyncio.sleep)
        return self._reply(call, messages, response)

    @staticmethod
    def _reply(call: _Call, messages: Messages, response: Any) -> Reply:
        reply = Reply(response.choices[0].message.content or "", call.row, messages, response)
        reply.note = call.note
        reply.finish_reason = finish_reason(response)
        return reply

    async def _arun(
        self,
        call: _Call,
        attempt: Callable[[], Awaitable[Any]],
        on_retry: Callable[[RetryNote], Any] | None,
        report: Report,
        messages: Messages,
        sleep: Callable[[float], Awaitable[Any]],
    ) -> Any:
        """``_run`` for coroutines: the session's tenacity policy as ``AsyncRetrying``, the same row whatever happens."""
        import asyncio

        settings, row = call.settings, call.row
        policy = async_retrying(settings.num_retries, settings.retry_min_wait, settings.retry_max_wait, sleep=sleep, on_retry=on_retry)
        row.attempts = 0

        async def counted() -> Any:
            row.attempts += 1
            return await attempt()

        error: LLMError | None = None
        try:
            if call.check_key:
                check_key(call)
            with unlogged():
                response: Any = await policy(counted)
            return self._succeeded(call, response, messages)
        except (KeyboardInterrupt, asyncio.CancelledError):
            self._interrupted(call, messages)  # the row: the prompt was sent, counted locally
            raise
        except Exception as exc:
            error = self._failed(call, exc, messages)
        finally:
            self._report(call, report)
        raise _unchained(error)

    # -- the call --------------------------------------------------------------------------------------
    def _chat_arguments(
        self, settings: Settings, messages: Messages, extra: dict[str, Any] | None, cap: int | None = None
    ) -> dict[str, Any]:
        kwargs = self._common_arguments(settings, settings.model)
        kwargs["messages"] = messages
        if settings.temperature is not None:
            kwargs["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            kwargs["max_tokens"] = settings.max_tokens
        kwargs.update(extra or {})
        if cap is not None:
            # A budget's output cap replaces the user's own (it is never above it), under the name the model takes.
            asked = "max_completion_tokens" in kwargs
            kwargs.pop("max_tokens", None)
            kwargs.pop("max_completion_tokens", None)
            name = "max_completion_tokens" if asked or caps_completion_tokens(settings.model, settings.base_url) else "max_tokens"
            kwargs[name] = cap
        return kwargs

    def _common_arguments(self, settings: Settings, model: str) -> dict[str, Any]:
        # max_retries=0: the OpenAI SDK must not retry beneath our policy (num_retries is never passed).
        kwargs: dict[str, Any] = {"model": model, "timeout": settings.timeout, "max_retries": 0}
        if settings.api_key:
            kwargs["api_key"] = settings.api_key.reveal()
        if settings.base_url:
            kwargs["api_base"] = settings.base_url
        if settings.api_version:
            kwargs["api_version"] = settings.api_version
        return kwargs

    def _begin(self, kind: str, model: str, settings: Settings, target: str | None = None) -> _Call:
        row = UsageRow(kind=kind, model=model, provider=resolve_provider(target or model, settings.base_url))
        return _Call(kind, model, settings, row, start=self.clock(), target=target or model)

    def _stream_once(
        self, completion: Callable[..., Any], kwargs: dict[str, Any], on_text: Callable[[str], Any] | None
    ) -> tuple[Any, str | None]:
        """One streamed attempt: the answer built from its chunks (None when none came) and the finish reason sent."""
        litellm = load_litellm()
        chunks: list[Any] = []
        pieces: list[str] = []
        stream = completion(stream=True, stream_options={"include_usage": True}, **kwargs)
        broken: StreamBrokenError | None = None
        try:
            for chunk in stream:
                chunks.append(chunk)
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    pieces.append(delta)
                    if on_text is not None:
                        on_text(delta)
        except KeyboardInterrupt:
            # Close the connection: the provider stops generating (and charging for) the rest of the reply.
            close = getattr(stream, "close", None)
            try:
                if callable(close):
                    close()
            except Exception:  # the interrupt is what the user must see
                pass
            raise
        except Exception as exc:
            if not pieces:
                raise  # nothing shown yet: the retry policy decides
            broken = StreamBrokenError(broken_message(exc, len(pieces)), partial="".join(pieces), provider_message=provider_words(exc))
        if broken is not None:
            raise broken  # outside the except block: litellm's exception is not chained
        response = litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        # litellm's stream wrapper yields a usage chunk even when the provider sent none (it counts the tokens
        # itself, silently), and stamps its own price into it. The provider's own chunks, which the wrapper keeps
        # in ``chunks``, tell what really arrived: the reply carries that usage, or none (then ipyllm counts and
        # says so).
        if response is not None:  # None for an empty stream (see has_answer)
            response.usage = provider_usage(provider_chunks(stream), chunks)
        return response, streamed_finish(provider_chunks(stream), chunks)

    def _run(
        self,
        call: _Call,
        attempt: Callable[[], Any],
        on_retry: Callable[[RetryNote], Any] | None,
        report: Report,
        messages: Messages | None,
    ) -> Any:
        settings, row = call.settings, call.row
        policy = retrying(settings.num_retries, settings.retry_min_wait, settings.retry_max_wait, sleep=self.sleep, on_retry=on_retry)
        row.attempts = 0

        def counted() -> Any:
            row.attempts += 1
            call.received.clear()  # an attempt that broke before any text is retried from the start
            return attempt()

        error: LLMError | None = None
        interrupted: Interrupted | None = None
        try:
            if call.check_key:
                check_key(call)
            with unlogged():
                response = policy(counted)
            return self._succeeded(call, response, messages)
        except KeyboardInterrupt:
            interrupted = self._interrupted(call, messages)
        except Exception as exc:
            error = self._failed(call, exc, messages)
        finally:
            self._report(call, report)
        if interrupted is not None:
            raise interrupted
        raise _unchained(error)

    # -- the row: one place builds it, whichever way the call ended --------------------------------------------
    def _succeeded(self, call: _Call, response: Any, messages: Messages | None) -> Any:
        call.row.latency_s = self.clock() - call.start
        self._record_usage(call, response, messages)
        return response

    def _failed(self, call: _Call, exc: BaseException, messages: Messages | None) -> LLMError:
        """The call failed after its attempts: ipyllm's one-line error, and the row says so, with the tokens the
        provider reported (or, for a stream that broke, those counted of what had come)."""
        row = call.row
        error = explain(exc, call, row.attempts)
        row.status, row.error = "error", f"{type(error).__name__}: {error.message}"
        if isinstance(error, StreamBrokenError) and messages is not None:
            self._count_locally(call, messages, error.partial)
        reported = getattr(error, "reported_usage", None)
        if reported is not None:
            self._set_tokens(call, reported[0], reported[1])
        error.usage = row
        return error

    def _report(self, call: _Call, report: Report) -> None:
        row = call.row
        if row.status not in ("ok", "interrupted"):  # an interrupted row's latency ends at the interrupt
            row.latency_s = self.clock() - call.start
        report(row)

    def _interrupted(self, call: _Call, messages: Messages | None) -> Interrupted:
        """The row of an interrupted call: what was sent and received so far, counted locally, and its cost."""
        row = call.row
        row.latency_s = self.clock() - call.start
        partial = "".join(call.received)
        if partial:
            where = "the partial reply is kept above" if call.shown else "the partial reply is in the exception's .partial"
        else:
            where = "no reply had arrived"
        message = f"interrupted after {row.latency_s:.1f} s; {where}"
        row.status, row.error = "interrupted", f"KeyboardInterrupt: {message}"
        # Once an attempt went out, the provider had the prompt: count it (with whatever text came), so that
        # spend and budgets see it. A count that fails leaves the tokens unknown rather than losing the row.
        if row.attempts and messages is not None:
            try:
                self._count_locally(call, messages, partial)
                row.tokens_estimated = True
            except Exception:
                pass
        return Interrupted(message, partial=partial, usage=row)

    def _record_usage(self, call: _Call, response: Any, messages: Messages | None) -> None:
        usage = usage_field(response, "usage")
        prompt, completion = usage_field(usage, "prompt_tokens"), usage_field(usage, "completion_tokens")
        # litellm fills a usage the provider did not send with zeros; no real prompt has zero tokens.
        if not prompt:
            if messages is not None:
                self._count_locally(call, messages, response.choices[0].message.content or "", response)
            elif call.texts is not None:
                self._count_texts_locally(call, call.texts, response)
            return
        self._set_tokens(call, int(prompt), int(completion or 0), usage=usage, response=response)

    def _count_locally(self, call: _Call, messages: Messages, text: str, response: Any = None) -> None:
        litellm = load_litellm()
        prompt = litellm.token_counter(model=call.model, messages=messages)
        completion = litellm.token_counter(model=call.model, text=text, count_response_tokens=True) if text else 0
        self._set_tokens(call, prompt, completion, response=response, estimated=True)

    def _count_texts_locally(self, call: _Call, texts: list[str], response: Any) -> None:
        litellm = load_litellm()
        tokens = sum(int(litellm.token_counter(model=call.model, text=text)) for text in texts)
        self._set_tokens(call, tokens, 0, response=response, estimated=True)

    def _set_tokens(
        self, call: _Call, prompt: int | None, completion: int, *, usage: Any = None, response: Any = None, estimated: bool = False
    ) -> None:
        """Fill the row's tokens and cost; ``usage`` is what the provider reported (None when counted locally)."""
        row = call.row
        row.prompt_tokens, row.completion_tokens = prompt, completion
        row.total_tokens = (prompt or 0) + completion
        row.cached_tokens = None if usage is None else cached_tokens(usage)
        row.tokens_estimated = estimated
        row.cost_usd = call_cost(call.settings, call.model, row.provider, prompt or 0, completion, call.kind, usage, response)


def _unchained(error: LLMError | None) -> LLMError:
    """The error to raise outside the ``except`` block: neither ``__cause__`` nor ``__context__`` carries litellm's
    exception (which can repeat the key), and a fresh traceback starts above litellm's frames, so IPython shows
    the error's one line."""
    assert error is not None
    error.__cause__ = error.__context__ = None
    return error.with_traceback(None)
