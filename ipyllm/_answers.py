"""What came back: a chat answer with no choice, a stream with no text, a stream that broke off.

Small checks the client runs on each attempt's answer, so that an empty answer is an error with a usage row,
never an ``ok`` row with empty text.
"""

from __future__ import annotations

import sys
from typing import Any

from ipyllm._errors import LLMError, RequestRejectedError
from ipyllm._retry import describe

__all__ = ["broken_message", "has_answer", "one_choice"]


def broken_message(exc: BaseException, pieces: int) -> str:
    """Why a stream stopped after ``pieces`` pieces of text, naming litellm's repeated-chunk guard when it fired."""
    reason = describe(exc)
    if reason == "litellm's repeated-chunk guard":
        limit = getattr(sys.modules.get("litellm"), "REPEATED_STREAMING_CHUNK_LIMIT", 100)
        return (
            f"litellm's repeated-chunk guard stopped the reply after {pieces} pieces: the model sent the same piece {limit} times "
            "in a row; try again, or raise temperature"
        )
    if reason == "the stream broke before any text":
        reason = "the connection closed before the end"
    return f"the reply broke off after {pieces} pieces ({reason}): what came is kept; run again for the whole reply"


def one_choice(response: Any, provider: str | None) -> Any:
    """A chat answer with no choice is an error, with the provider's finish reason when it gave one."""
    if getattr(response, "choices", None):
        return response
    reason = getattr(response, "finish_reason", None) or (response.get("finish_reason") if isinstance(response, dict) else None)
    provider = provider or "the provider"
    cls = RequestRejectedError if reason == "content_filter" else LLMError
    why = f" (finish reason: {reason})" if reason else ""
    advice = "rephrase the prompt" if reason == "content_filter" else "try again, or another model"
    error = cls(f"{provider} answered with no reply (zero choices){why}: {advice}", provider_message=str(reason or ""))
    usage = getattr(response, "usage", None)
    if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
        error.reported_usage = (usage.prompt_tokens, usage.completion_tokens or 0)  # type: ignore[attr-defined]
    raise error


def has_answer(response: Any) -> bool:
    """Text or a tool call in the first choice."""
    choices = getattr(response, "choices", None)
    if not choices:
        return False
    message = choices[0].message
    return bool(message.content or getattr(message, "tool_calls", None) or getattr(message, "function_call", None))
