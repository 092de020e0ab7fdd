"""One logical model call through litellm: its arguments and the retry loop, synchronous or not, streamed or not.

Each attempt is ``_attempt``'s (sent whole or streamed); the call's state and its one usage row are ``_callrow``'s
(tokens, cost, how it ended); what a call costs is ``_cost``'s. The two retry loops, ``Client._run`` and
``Client._arun``, differ only in how they wait: both end in ``Call.settle``.

litellm is imported on first use (its import takes seconds), with its price map read from the bundled
copy unless the user chose otherwise, and with its banners off. The client knows nothing of pandas or
IPython: every call hands exactly one ``UsageRow`` to its ``report`` callback, whatever the outcome, and
the layer above decides where the row goes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from ipyllm._answers import finish_reason
from ipyllm._attempt import async_attempt, attempt
from ipyllm._callrow import Call, Messages, Report
from ipyllm._config import Settings
from ipyllm._display import footer, render
from ipyllm._litellm import NO_RETRIES, caps_completion_tokens, load_litellm, resolve_provider, unlogged
from ipyllm._promptcache import CachePlan
from ipyllm._retry import RetryNote, aretried, retried
from ipyllm._usage import UsageRow

__all__ = ["Client", "Embeddings", "Reply", "as_messages", "chat_arguments", "common_arguments"]


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
        cache: CachePlan | None = None,
    ) -> Reply:
        """One chat call, retried; ``on_text`` receives each streamed piece; ``cap`` is a budget's output cap; ``cache``
        the prompt caching of the map it belongs to."""
        litellm = load_litellm()
        kwargs = chat_arguments(settings, messages, extra, cap, cache)
        completion = self._completion or litellm.completion
        call = self._begin("chat", settings.model, settings, messages=messages)
        call.check_key = self._completion is None and "api_key" not in kwargs and "api_base" not in kwargs
        response = self._run(call, attempt(call, completion, kwargs, stream, call.collect(on_text)), on_retry, report)
        return _reply(call, messages, response)

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
        kwargs = common_arguments(settings, target)
        kwargs["max_retries"] = NO_RETRIES
        kwargs["input"] = texts
        kwargs.update(extra or {})
        embedding = self._embedding or litellm.embedding
        call = self._begin("embedding", model, settings, target)
        call.check_key = self._embedding is None and "api_key" not in kwargs and "api_base" not in kwargs
        call.texts = texts
        response = self._run(call, lambda: embedding(**kwargs), on_retry, report)
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
        cache: CachePlan | None = None,
    ) -> Reply:
        """``chat`` without blocking the event loop (not streamed): ``litellm.acompletion`` under the same policy.

        Each attempt runs inside ``around_attempt()`` when given (a batch's rate-limit pause and its limit
        on requests in flight); retry waits are spent with ``sleep`` (``asyncio.sleep`` by default); each
        attempt is sent with ``send`` (``litellm.acompletion`` by default; a batch's ``_helpers.Spread``); ``cache`` is a
        map's prompt caching (a marker or a ``prompt_cache_key``). Cancelling the task records an ``interrupted`` row.
        """
        kwargs = chat_arguments(settings, messages, extra, cap, cache)
        # A batch's ``send`` may go out through a helper process before this process's litellm is imported.
        acompletion = self._acompletion or send or load_litellm().acompletion
        call = self._begin("chat", settings.model, settings, messages=messages)
        call.check_key = self._acompletion is None and "api_key" not in kwargs and "api_base" not in kwargs
        response = await self._arun(call, async_attempt(call, acompletion, kwargs, around_attempt), on_retry, report, sleep)
        return _reply(call, messages, response)

    # -- the retry loop: the same body, with or without a coroutine; the row is settled in one place -----------
    def _run(self, call: Call, attempt: Callable[[], Any], on_retry: Callable[[RetryNote], Any] | None, report: Report) -> Any:
        response: Any = None
        error: BaseException | None = None
        try:
            call.begin()
            with unlogged():
                response = retried(call.counted(attempt), call.settings, sleep=self.sleep, on_retry=on_retry)
        except BaseException as exc:
            error = call.failure(exc)
        return call.settle(response, error, report)

    async def _arun(
        self,
        call: Call,
        attempt: Callable[[], Awaitable[Any]],
        on_retry: Callable[[RetryNote], Any] | None,
        report: Report,
        sleep: Callable[[float], Awaitable[Any]] | None,
    ) -> Any:
        """``_run`` for coroutines: the same policy (``aretried``), its waits spent with ``sleep``; a cancelled task ends cancelled."""
        import asyncio

        response: Any = None
        error: BaseException | None = None
        try:
            call.begin()
            with unlogged():
                response = await aretried(call.acounted(attempt), call.settings, sleep=sleep or asyncio.sleep, on_retry=on_retry)
        except BaseException as exc:
            error = call.failure(exc, cancelled=True)
        return call.settle(response, error, report, cancelled=True)

    def _begin(self, kind: str, model: str, settings: Settings, target: str | None = None, messages: Messages | None = None) -> Call:
        row = UsageRow(kind=kind, model=model, provider=resolve_provider(target or model, settings.base_url))
        return Call(kind, model, settings, row, self.clock, start=self.clock(), target=target or model, messages=messages)


def _reply(call: Call, messages: Messages, response: Any) -> Reply:
    reply = Reply(response.choices[0].message.content or "", call.row, messages, response)
    reply.note = call.note
    reply.finish_reason = finish_reason(response)
    return reply


# -- what litellm is asked --------------------------------------------------------------------------------------
def chat_arguments(
    settings: Settings, messages: Messages, extra: dict[str, Any] | None, cap: int | None = None, cache: CachePlan | None = None
) -> dict[str, Any]:
    """A chat call's arguments: the settings', the extra ones, a budget's output ``cap`` under the name the model takes,
    and a map's prompt caching (``cache``: a ``cache_control`` marker on the shared prefix, or a ``prompt_cache_key``)."""
    kwargs = common_arguments(settings, settings.model)
    provider = resolve_provider(settings.model, settings.base_url)
    if provider:
        # The provider litellm itself resolved (memoized): told, it skips resolving it again, a fifth of its CPU per call
        # when the endpoint is a base URL (its scan of the known endpoints).
        kwargs["custom_llm_provider"] = provider
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
    if cache is not None:
        cache.apply(kwargs)
    return kwargs


def common_arguments(settings: Settings, model: str) -> dict[str, Any]:
    """What every call is sent: the model, the timeout, the key and endpoint, and no retries of the SDK's own."""
    # max_retries=0: the OpenAI SDK must not retry beneath our policy (num_retries is never passed).
    kwargs: dict[str, Any] = {"model": model, "timeout": settings.timeout, "max_retries": 0}
    if settings.api_key:
        kwargs["api_key"] = settings.api_key.reveal()
    if settings.base_url:
        kwargs["api_base"] = settings.base_url
    if settings.api_version:
        kwargs["api_version"] = settings.api_version
    return kwargs
