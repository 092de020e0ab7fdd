"""The stub's answers, deterministic and free of HTTP: their text, usage and finish reason, and their JSON.

A chat reply is ``"[{model}] {echo of the last user message}"`` (longer with ``reply_tokens``; a JSON value
that fits the schema when the request asks for one), cut at ``max_tokens`` as providers cut it; tokens are
counted as words and punctuation marks; embeddings are histograms of character codes.

Content parts are echoed in place: a text part as its text, an image (a base64 data URL, decoded and its size read
from its header) as ``[image W×H]``, a remote image as ``[image <url>]``, a file as ``[file application/pdf N bytes]``
(``[file <file_id>]`` for an uploaded one). An image's prompt tokens are OpenAI's tile formula
(``ipyllm._parts.image_tokens(w, h, detail)``: 85, plus 170 per 512-pixel tile of the image scaled to fit 2048×2048
and then to 768 on its short side; 85 with ``detail: low``); a remote image costs 85, a file 1 token per 100 bytes
(at least 1), an uploaded file 1. An image or file that cannot be decoded is refused with HTTP 400
(``content_problem``), as OpenAI refuses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from ipyllm._imagesize import image_size
from ipyllm._parts import image_tokens, join_pieces
from ipyllm.testing._faults import Fault

__all__ = [
    "DONE",
    "EMBEDDING_DIMENSIONS",
    "STUB_MODELS",
    "chat_payload",
    "chat_reply",
    "chunk",
    "content_problem",
    "count_tokens",
    "embeddings_payload",
    "error_payload",
    "fit_schema",
    "models_payload",
    "prompt_sequence",
    "sent_key",
    "stream_pieces",
    "tokenize",
    "turn",
    "usage_chunk",
    "zero_choices_chunk",
    "zero_choices_payload",
]

STUB_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "stub-local")
EMBEDDING_DIMENSIONS = 8
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
#: The last event of a stream.
DONE = b"data: [DONE]\n\n"


def count_tokens(text: str) -> int:
    """The stub's own tokenizer: words and punctuation marks (at least 1 for a non-empty text)."""
    return len(_TOKEN_RE.findall(text))


def tokenize(text: str) -> list[str]:
    """The stub's tokens of a text: its words and punctuation marks."""
    return _TOKEN_RE.findall(text)


def sent_key(headers: Any) -> str:
    """The key a request carried: ``Authorization: Bearer <key>`` (OpenAI) or ``api-key`` (Azure)."""
    auth = headers.get("Authorization") or ""
    return auth.removeprefix("Bearer ").strip() or (headers.get("api-key") or "").strip()


_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?:;[^;,]*)*;base64,(?P<payload>.*)$", re.DOTALL)
#: What a remote image costs (OpenAI's base for one image).
REMOTE_IMAGE_TOKENS = 85


class _UndecodableError(ValueError):
    """A content part whose data cannot be decoded: the request is refused (``content_problem``)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _decoded(url: str) -> tuple[str, bytes] | None:
    """A base64 data URL's MIME type and bytes; None if it is not a base64 data URL; ``_UndecodableError`` if its data is not base64."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    try:
        return match["mime"], base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise _UndecodableError("image") from None


# A request's images are read four times (the refusal's check, the echo, the usage, the prompt cache): keep the last few.
@lru_cache(maxsize=8)
def _image(url: str, detail: str | None) -> tuple[str, list[str]]:
    """An image part's echo and its prompt tokens (each the same marker of that image, so a prompt cache tells images apart)."""
    if url.startswith(("http://", "https://")):
        return f"[image {url}]", [f"<|image {url}|>"] * REMOTE_IMAGE_TOKENS
    decoded = _decoded(url)
    found = image_size(decoded[1]) if decoded is not None else None
    if decoded is None or found is None:
        raise _UndecodableError("image")
    _, width, height = found
    marker = f"<|image {hashlib.sha256(decoded[1]).hexdigest()[:16]}|>"
    detail = detail if detail in ("low", "high", "auto") else "auto"
    return f"[image {width}×{height}]", [marker] * image_tokens(width, height, detail)


def _file(file: dict[str, Any]) -> tuple[str, list[str]]:
    """A file part's echo and its prompt tokens: 1 per 100 bytes (at least 1); an uploaded file (``file_id``) 1."""
    try:
        decoded = _decoded(str(file.get("file_data") or ""))
    except _UndecodableError:
        raise _UndecodableError("file") from None
    if decoded is None:
        if file.get("file_id"):
            return f"[file {file['file_id']}]", [f"<|file {file['file_id']}|>"]
        raise _UndecodableError("file")
    mime, data = decoded
    marker = f"<|file {hashlib.sha256(data).hexdigest()[:16]}|>"
    return f"[file {mime or 'application/octet-stream'} {len(data)} bytes]", [marker] * max(1, len(data) // 100)


def _piece(part: Any) -> tuple[str, list[str]]:
    """A content part's echo and its prompt tokens; ``_UndecodableError`` for an image or file that cannot be decoded."""
    if isinstance(part, str):
        return part, tokenize(part)
    if not isinstance(part, dict):
        return "", []
    kind = part.get("type")
    if kind == "image_url":
        image_url = part.get("image_url")
        if isinstance(image_url, dict):
            return _image(str(image_url.get("url") or ""), image_url.get("detail"))
        return _image(str(image_url or ""), None)
    if kind == "file":
        file = part.get("file")
        return _file(file if isinstance(file, dict) else {})
    text = str(part.get("text", ""))
    return text, tokenize(text)


def _pieces(content: Any) -> list[tuple[str, list[str]]]:
    """A message's content as echoes and tokens, part by part; an undecodable image or file as ``[image]`` (85 tokens)
    or ``[file]`` (1): only the chat route refuses them, a batch line or the Messages API answers anyway."""
    if content is None:
        return []
    if not isinstance(content, list):
        text = content if isinstance(content, str) else str(content)
        return [(text, tokenize(text))]
    pieces = []
    for part in content:
        try:
            pieces.append(_piece(part))
        except _UndecodableError as error:
            pieces.append(("[image]", ["<|image|>"] * REMOTE_IMAGE_TOKENS) if error.kind == "image" else ("[file]", ["<|file|>"]))
    return pieces


def _message_text(content: Any) -> str:
    return join_pieces([echo for echo, _ in _pieces(content)])


def content_problem(messages: Any) -> dict[str, Any] | None:
    """OpenAI's 400 body for the first image or file part that cannot be decoded (bad base64, or bytes that are not
    a PNG, JPEG, GIF or WebP image); None when every part can be read. Messages and parts are counted from 0."""
    for number, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for index, part in enumerate(content if isinstance(content, list) else []):
            try:
                _piece(part)
            except _UndecodableError as error:
                if error.kind == "image":
                    what, send, code = "image", "Send a PNG, JPEG, GIF or WebP.", "invalid_image_format"
                else:
                    what, send, code = "file", "Send its bytes base64-encoded in a data URL.", "invalid_file_format"
                message_text = f"Invalid {what} data in message {number}, part {index}: the {what} could not be decoded. {send}"
                return {"error": {"message": message_text, "type": "invalid_request_error", "param": None, "code": code}}
    return None


def turn(role: str) -> list[str]:
    """The 3 tokens that open a message (or, with ``assistant``, the reply)."""
    return ["<|start|>", role, "<|sep|>"]


def prompt_sequence(messages: list[dict[str, Any]]) -> list[str]:
    """A chat prompt as the stub's tokens, its length the ``prompt_tokens``: each message in order, 3 tokens for its
    turn (``<|start|>``, the role, ``<|sep|>``) then its content's words and punctuation marks (an image part its
    tile tokens, a file part 1 per 100 bytes: see the module's docstring); then 3 opening the reply.
    """
    tokens: list[str] = []
    for message in messages:
        tokens += turn(str(message.get("role")))
        for _, piece in _pieces(message.get("content")):
            tokens += piece
    return tokens + turn("assistant")


def chat_reply(model: str, body: dict[str, Any], scripted: str | None = None, reply_tokens: int = 0) -> tuple[str, dict[str, int], str]:
    """The reply's text, its usage and its finish reason (``length`` when ``max_tokens`` cut it, else ``stop``)."""
    messages = body.get("messages") or []
    last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    prompt = _message_text(last_user.get("content"))
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema") if isinstance(response_format, dict) else None
    if scripted is not None:
        text = scripted
    elif response_format.get("type") == "json_schema" and isinstance(schema, dict):
        text = json.dumps(fit_schema(schema, prompt, schema))
    else:
        text = f"[{model}] {prompt}".strip()
        if (missing := reply_tokens - count_tokens(text)) > 0:
            # A long reply, as a model that goes on and on: the echo, then as many words as asked for (numbered, so no
            # two streamed pieces are alike: litellm stops a stream that repeats one piece 100 times).
            text = f"{text} {' '.join(f'more{i}' for i in range(missing))}"
    finish = "stop"
    if (max_tokens := body.get("max_tokens") or body.get("max_completion_tokens")) is not None:
        # Cut after the last whole token that fits, as a provider stops at max_tokens.
        tokens = list(_TOKEN_RE.finditer(text))
        if len(tokens) > int(max_tokens):
            text = text[: tokens[int(max_tokens) - 1].end()] if int(max_tokens) > 0 else ""
            finish = "length"
    # Each message costs its words plus 3, as OpenAI's own accounting roughly does.
    prompt_tokens = len(prompt_sequence(messages))
    completion_tokens = count_tokens(text)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    return text, usage, finish


def fit_schema(schema: dict[str, Any], prompt: str, root: dict[str, Any] | None = None) -> Any:
    """A value that fits a JSON schema, made from the prompt, deterministically (the stub's structured reply).

    Strings are the prompt's words (a field named like a word of the prompt gets the word after it); an
    ``enum`` takes the first of its values that the prompt mentions, else one picked by the prompt's length;
    integers and numbers count the prompt's words; objects recurse (``$ref`` into ``$defs`` included).
    """
    root = root or schema
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        schema = (root.get("$defs") or root.get("definitions") or {}).get(name, {})
    for combined in ("anyOf", "oneOf", "allOf"):
        if combined in schema:
            options = [option for option in schema[combined] if option.get("type") != "null"] or schema[combined]
            return fit_schema(options[0], prompt, root)
    words = _TOKEN_RE.findall(prompt)
    if "enum" in schema:
        values = list(schema["enum"])
        mentioned = [v for v in values if str(v).lower() in prompt.lower()]
        return mentioned[0] if mentioned else values[len(words) % len(values)]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        return {name: _fit_field(name, sub, prompt, root) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [fit_schema(schema.get("items") or {}, prompt, root)]
    if kind == "integer":
        return len(words)
    if kind == "number":
        return float(len(words)) / 2
    if kind == "boolean":
        return len(words) % 2 == 0
    if kind == "null":
        return None
    return prompt


def _fit_field(name: str, schema: dict[str, Any], prompt: str, root: dict[str, Any]) -> Any:
    # "name: Ada" in the prompt gives the field "name" the value "Ada".
    if schema.get("type") == "string" and "enum" not in schema:
        match = re.search(rf"\b{re.escape(name)}\b\W*(\w[\w@-]*(?:\.\w[\w@-]*)*)", prompt, flags=re.IGNORECASE)
        if match:
            return match[1]
    return fit_schema(schema, prompt, root)


def _vector(text: str) -> list[float]:
    # Deterministic and cheap: a normalised histogram of character codes.
    counts = [0.0] * EMBEDDING_DIMENSIONS
    for char in text:
        counts[ord(char) % EMBEDDING_DIMENSIONS] += 1.0
    norm = sum(c * c for c in counts) ** 0.5 or 1.0
    return [c / norm for c in counts]


# -- the JSON of the answers ------------------------------------------------------------------------------


def models_payload() -> dict[str, Any]:
    """``GET /v1/models``: the stub's models."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "ipyllm-stub"} for m in STUB_MODELS]
    return {"object": "list", "data": data}


def error_payload(fault: Fault) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of an HTTP error answer (status ``fault.code``), in OpenAI's form."""
    status = fault.code
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = f"{fault.retry_after:g}"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    error_type = {400: "invalid_request_error", 401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
    message = fault.message or f"{phrase} (stub)"
    kind = fault.error_type or error_type.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "code": error_type.get(status)}}, headers


def chat_payload(model: str, text: str, finish: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    """A whole chat answer; ``usage`` None: none reported."""
    payload: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
    }
    if usage is not None:
        payload["usage"] = usage
    return payload


def zero_choices_payload(model: str, finish_reason: str) -> dict[str, Any]:
    """A chat answer with ``"choices": []`` (a filtered or truncated answer), ``finish_reason`` beside when given."""
    payload: dict[str, Any] = {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model}
    payload["choices"] = []
    if finish_reason:
        payload["finish_reason"] = finish_reason
    payload["usage"] = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    return payload


def stream_pieces(text: str) -> list[str]:
    """The streamed reply's content chunks: a word each, with the spaces after it."""
    return re.findall(r"\S+\s*", text)


def _event(model: str, created: int, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    data = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices, **extra}
    return f"data: {json.dumps(data)}\n\n".encode()


def chunk(model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One server-sent event of a streamed chat answer."""
    return _event(model, created, [{"index": 0, "delta": delta, "finish_reason": finish}])


def usage_chunk(model: str, created: int, usage: dict[str, Any]) -> bytes:
    """The stream's usage event (``stream_options.include_usage``): no choices, the usage."""
    return _event(model, created, [], usage=usage)


def zero_choices_chunk(model: str, created: int, finish_reason: str) -> bytes:
    """A whole streamed answer with ``"choices": []``, ``finish_reason`` beside when given, then ``[DONE]``."""
    extra = {"finish_reason": finish_reason} if finish_reason else {}
    return _event(model, created, [], **extra) + DONE


def embeddings_payload(model: str, body: dict[str, Any], report_usage: bool) -> dict[str, Any]:
    """``POST /v1/embeddings``: a vector for each input, with usage unless ``report_usage`` is False."""
    inputs = body.get("input", [])
    if isinstance(inputs, str):
        inputs = [inputs]
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += max(1, count_tokens(text))
        data.append({"object": "embedding", "index": index, "embedding": _vector(text)})
    payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if report_usage:
        payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return payload
