"""One attempt of a chat call: sent whole or streamed, synchronous or not; what the retry loop runs each time.

A streamed answer is built from its chunks with the usage the provider really sent; a stream that breaks before
its first piece is the retry policy's to decide, one that breaks later is a ``StreamBrokenError`` carrying what
came, and one that came empty is asked again without streaming, so that the server says why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ipyllm._answers import broken_message, empty_note, finish_reason, has_answer, one_choice, streamed_finish
from ipyllm._callrow import Call
from ipyllm._cost import provider_usage
from ipyllm._explain import provider_words
from ipyllm._litellm import load_litellm, provider_chunks
from ipyllm.errors import StreamBrokenError

__all__ = ["async_attempt", "attempt", "stream_once"]


def attempt(
    call: Call, completion: Callable[..., Any], kwargs: dict[str, Any], stream: bool, on_text: Callable[[str], Any]
) -> Callable[[], Any]:
    """One attempt of a synchronous chat call; ``on_text`` receives each streamed piece."""

    def run() -> Any:
        if not stream:
            response = one_choice(completion(**kwargs), call.where)
            call.note = empty_note(response, finish_reason(response), call.model, call.where)
            return response
        response, finish = stream_once(completion, kwargs, on_text)
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
        if text := again.choices[0].message.content:
            on_text(text)
        return again

    return run


def async_attempt(
    call: Call,
    acompletion: Callable[..., Awaitable[Any]],
    kwargs: dict[str, Any],
    around: Callable[[], AbstractAsyncContextManager[Any]] | None,
) -> Callable[[], Awaitable[Any]]:
    """One attempt of an asynchronous chat call (not streamed), inside ``around()`` when given."""

    async def run() -> Any:
        if around is None:
            response = one_choice(await acompletion(**kwargs), call.where)
        else:
            async with around():
                response = one_choice(await acompletion(**kwargs), call.where)
        call.note = empty_note(response, finish_reason(response), call.model, call.where)
        return response

    return run


def stream_once(completion: Callable[..., Any], kwargs: dict[str, Any], on_text: Callable[[str], Any] | None) -> tuple[Any, str | None]:
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
