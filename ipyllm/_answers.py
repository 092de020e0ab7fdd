"""What came back: a chat answer with no choice, an answer with no text, a stream that broke off.

Small checks the client runs on each attempt's answer. An answer with no text is still an answer when the
provider said why it ended (a finish reason): ``ok`` with ``''`` and a one-line note, streamed or not. A
stream that ended without one, or with nothing at all, broke; a choice-less answer or one withheld by a
content filter is an error. Errors keep the tokens the provider reported, and name the endpoint as every
error does (``endpoint``).
"""

from __future__ import annotations

from typing import Any

from ipyllm._litellm import repeated_chunk_limit
from ipyllm._retry import describe
from ipyllm.errors import LLMError, RequestRejectedError

__all__ = ["broken_message", "empty_note", "endpoint", "finish_reason", "has_answer", "one_choice", "reported_usage", "streamed_finish"]


def endpoint(base_url: str | None, provider: str | None) -> str:
    """Who answered, as every error names it: the server's ``base_url`` when set, else the provider."""
    return base_url or provider or "the provider"


def broken_message(exc: BaseException, pieces: int) -> str:
    """Why a stream stopped after ``pieces`` pieces of text, naming litellm's repeated-chunk guard when it fired."""
    reason = describe(exc)
    if reason == "litellm's repeated-chunk guard":
        limit = repeated_chunk_limit()
        return (
            f"litellm's repeated-chunk guard stopped the reply after {pieces} pieces: the model sent the same piece {limit} times "
            "in a row; try again, or raise temperature"
        )
    if reason == "the stream broke before any text":
        reason = "the connection closed before the end"
    return f"the reply broke off after {pieces} pieces ({reason}): what came is kept; run again for the whole reply"


def reported_usage(*responses: Any) -> tuple[int, int] | None:
    """The prompt and completion tokens the first of ``responses`` that reported any reported (None: none did)."""
    for response in responses:
        usage = getattr(response, "usage", None) if not isinstance(response, dict) else response.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else getattr(usage, "prompt_tokens", None)
        if prompt:  # litellm fills a usage the provider did not send with zeros
            completion = usage.get("completion_tokens") if isinstance(usage, dict) else getattr(usage, "completion_tokens", None)
            return int(prompt), int(completion or 0)
    return None


def _failed(cls: type[LLMError], message: str, *responses: Any, said: str = "") -> LLMError:
    """An error carrying the tokens the provider reported with the answer (the client puts them in the row)."""
    error = cls(message, provider_message=said)
    error.reported_usage = reported_usage(*responses)  # type: ignore[attr-defined]
    return error


def one_choice(response: Any, where: str) -> Any:
    """A chat answer with no choice is an error, with the provider's finish reason when it gave one."""
    if getattr(response, "choices", None):
        return response
    reason = getattr(response, "finish_reason", None) or (response.get("finish_reason") if isinstance(response, dict) else None)
    cls = RequestRejectedError if reason == "content_filter" else LLMError
    why = f" (finish reason: {reason})" if reason else ""
    advice = "rephrase the prompt" if reason == "content_filter" else "try again, or another model"
    raise _failed(cls, f"{where} answered with no reply (zero choices){why}: {advice}", response, said=str(reason or ""))


def has_answer(response: Any) -> bool:
    """Text or a tool call in the first choice."""
    choices = getattr(response, "choices", None)
    if not choices:
        return False
    message = choices[0].message
    return bool(message.content or getattr(message, "tool_calls", None) or getattr(message, "function_call", None))


def streamed_finish(received: Any, yielded: list[Any]) -> str | None:
    """The finish reason a stream's provider sent, None when it sent none.

    litellm's stream wrapper yields a closing ``stop`` of its own when the provider sent no finish reason;
    the provider's own chunks, kept on the wrapper (``received``), tell what arrived. The yielded chunks
    serve when the stream is not litellm's (a test's stand-in).
    """
    for chunk in reversed(received if isinstance(received, list) else yielded):
        for choice in getattr(chunk, "choices", None) or ():
            if reason := getattr(choice, "finish_reason", None):
                return str(reason)
    return None


def empty_note(response: Any, finish: str | None, model: str, where: str, *, streamed: Any = None, reasked: bool = False) -> str | None:
    """The note for an answer with no text (None when it has text or a tool call): it ended for a reason.

    ``finish`` is the finish reason the provider sent. None means it sent none: the answer broke off, an
    error; so is an answer withheld by a content filter. ``reasked``: ``response`` is the answer to a broken
    stream asked again without streaming; ``streamed`` is that stream's answer, whose tokens stand in when
    the re-asked one reported none.
    """
    if has_answer(response):
        return None
    if finish is None:
        asked = "streamed and not" if reasked else "with no finish reason"
        raise _failed(LLMError, f"{where} sent an empty reply, {asked}: try again, or another model", response, streamed)
    if finish == "content_filter":
        raise _failed(
            RequestRejectedError,
            f"{where} withheld the reply under its content policy (finish reason: content_filter): rephrase the prompt",
            response,
            streamed,
            said=finish,
        )
    # What happened; what to do (a map's summary line keeps what comes before the ";").
    if finish == "length":
        return (
            f"{model} answered with no text: it reached its output cap (finish reason: length) before writing any, as hidden "
            "reasoning can; raise max_tokens (the empty reply is not cached)"
        )
    return f"{model} answered with no text (finish reason: {finish}); run again, or rephrase the prompt (the empty reply is not cached)"


def finish_reason(response: Any) -> str | None:
    """The first choice's finish reason (litellm fills ``stop`` when a plain answer has none)."""
    choices = getattr(response, "choices", None)
    reason = getattr(choices[0], "finish_reason", None) if choices else None
    return str(reason) if reason else None
