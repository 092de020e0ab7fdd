"""Anthropic's Messages API (``POST /v1/messages``) as the stub answers it, free of HTTP: the prompt's tokens and
cache breakpoints, the reply, its usage, its JSON and its server-sent events.

The reply is the chat reply (``_replies.chat_reply``: the echo of the last user message, cut at ``max_tokens``
with ``stop_reason`` ``max_tokens``). Tokens are counted as for chat completions, in Anthropic's order: the
tools (3 tokens, then each tool's JSON), the system prompt (3 tokens, then its blocks), each message (3 tokens,
then its blocks), and 3 that open the reply. A block carrying ``cache_control`` ends a cache breakpoint
(``_caching.PrefixCache.anthropic``), and ``usage`` reports ``cache_creation_input_tokens`` and
``cache_read_input_tokens`` (0 when nothing is cached, as Anthropic does) beside ``input_tokens``, which counts
neither.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from ipyllm.testing._faults import Fault
from ipyllm.testing._replies import chat_reply, stream_pieces, tokenize, turn

__all__ = ["anthropic_error", "anthropic_prompt", "anthropic_reply", "message_events", "message_payload"]

_TTL = {"5m": 300.0, "1h": 3600.0}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return f"{block.get('name', '')} {json.dumps(block.get('input', {}))}"
    if kind == "tool_result":
        content = block.get("content")
        return " ".join(_block_text(b) for b in content) if isinstance(content, list) else _block_text(content)
    return ""


def _marked(block: Any) -> tuple[bool, float | None]:
    """Whether a block carries ``cache_control``, and the ttl it asks for (None: the default)."""
    marker = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(marker, dict):
        return False, None
    return True, _TTL.get(str(marker.get("ttl", "")))


def anthropic_prompt(body: dict[str, Any]) -> tuple[list[str], list[tuple[int, float | None]]]:
    """The request's prompt as the stub's tokens, and its cache breakpoints: (end, ttl or None) for each marked block."""
    tokens: list[str] = []
    breakpoints: list[tuple[int, float | None]] = []

    def add(role: str, blocks: Any) -> None:
        tokens.extend(turn(role))
        for block in blocks if isinstance(blocks, list) else [blocks]:
            if isinstance(block, dict) and block.get("type") is None and role == "tools":  # a tool definition
                tokens.extend(tokenize(json.dumps({k: v for k, v in block.items() if k != "cache_control"})))
            else:
                tokens.extend(tokenize(_block_text(block)))
            marked, ttl = _marked(block)
            if marked:
                breakpoints.append((len(tokens), ttl))

    if body.get("tools"):
        add("tools", list(body["tools"]))
    if body.get("system"):
        add("system", body["system"])
    for message in body.get("messages") or []:
        add(str(message.get("role")), message.get("content"))
    return tokens + turn("assistant"), breakpoints


def anthropic_reply(model: str, body: dict[str, Any], scripted: str | None, reply_tokens: int) -> tuple[str, str, int]:
    """The reply's text, its ``stop_reason`` (``end_turn`` or ``max_tokens``) and its output tokens."""
    messages = [
        {
            "role": m.get("role"),
            "content": " ".join(_block_text(b) for b in m["content"]) if isinstance(m.get("content"), list) else m.get("content"),
        }
        for m in body.get("messages") or []
    ]
    text, usage, finish = chat_reply(model, {"messages": messages, "max_tokens": body.get("max_tokens")}, scripted, reply_tokens)
    return text, ("max_tokens" if finish == "length" else "end_turn"), usage["completion_tokens"]


def message_payload(model: str, text: str, stop_reason: str, usage: dict[str, int]) -> dict[str, Any]:
    """A whole Messages API answer."""
    return {
        "id": "msg_stub",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def message_events(model: str, text: str, stop_reason: str, usage: dict[str, int]) -> list[bytes]:
    """A streamed answer's events: message_start (input usage), a text block in word deltas, message_delta (output
    usage), message_stop."""
    start = message_payload(model, "", "", {**usage, "output_tokens": 1})
    start.update(content=[], stop_reason=None)
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("ping", {"type": "ping"}),
    ]
    for piece in stream_pieces(text):
        events.append(
            _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        )
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    events.append(_event("message_delta", delta))
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


def anthropic_error(fault: Fault) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of an HTTP error answer (status ``fault.code``), in Anthropic's form."""
    headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    try:
        phrase = HTTPStatus(fault.code).phrase
    except ValueError:
        phrase = "Error"
    kind = fault.error_type or _ERROR_TYPES.get(fault.code, "api_error")
    return {"type": "error", "error": {"type": kind, "message": fault.message or f"{phrase} (stub)"}}, headers
