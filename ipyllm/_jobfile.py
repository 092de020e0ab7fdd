"""A provider batch's files: the JSONL request file built from the calls a live ``map`` would make, split at the
provider's limits, and the output and error files read back, line by line.

Each request line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` where ``body`` is what
the live call sends (``_engine.chat_arguments``: the messages, sampling settings, schema's ``response_format``,
extra arguments and a budget's output cap) without what only the client needs (key, endpoint, timeout, retries).
Each result line is ``{"custom_id", "response": {"status_code", "body"}, "error"}`` (OpenAI's form, which Azure,
xAI, vLLM and litellm's own transformations of the other providers' files share). Knows nothing of the ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ipyllm._config import Settings
from ipyllm._cost import usage_field
from ipyllm._engine import chat_arguments

__all__ = ["ENDPOINT", "MAX_FILE_BYTES", "MAX_REQUESTS", "LineResult", "parse_results", "request_body", "request_line", "split"]

#: The endpoint every line of a chat batch goes to.
ENDPOINT = "/v1/chat/completions"
#: OpenAI's limits per batch file (Azure's are higher): a map larger than either is sent as several batches.
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024

#: litellm's arguments that are about the client, not the request: never in a request file.
_CLIENT_ONLY = ("api_key", "api_base", "api_version", "timeout", "max_retries", "custom_llm_provider")


def request_body(settings: Settings, model: str, messages: list[dict[str, Any]], extra: dict[str, Any], cap: int | None) -> dict[str, Any]:
    """The request a live call of ``map`` would send, as a batch line's ``body`` (``model``: as the provider knows it)."""
    body = chat_arguments(settings, messages, extra, cap)
    for name in _CLIENT_ONLY:
        body.pop(name, None)
    body["model"] = model
    provider_extra = body.pop("extra_body", None)
    if isinstance(provider_extra, dict):  # provider-specific parameters go into the body itself, as the SDK sends them
        body.update(provider_extra)
    return body


def request_line(custom_id: str, body: dict[str, Any]) -> bytes:
    """One line of the request file (with its newline)."""
    line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n"


def split(
    lines: Iterable[tuple[str, bytes]], max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_FILE_BYTES
) -> Iterator[tuple[list[str], bytes]]:
    """The request files, each with its lines' ``custom_id``s: a new file begun before one would pass ``max_requests``
    lines or ``max_bytes``."""
    keys: list[str] = []
    chunk: list[bytes] = []
    size = 0
    for key, line in lines:
        if len(line) > max_bytes:
            raise ValueError(f"one request is {len(line):,} bytes, more than a batch file may hold ({max_bytes:,})")
        if chunk and (len(chunk) >= max_requests or size + len(line) > max_bytes):
            yield keys, b"".join(chunk)
            keys, chunk, size = [], [], 0
        keys.append(key)
        chunk.append(line)
        size += len(line)
    if chunk:
        yield keys, b"".join(chunk)


@dataclass(frozen=True)
class LineResult:
    """One line of a batch's output or error file: the answer's body, or why there is none."""

    custom_id: str
    status_code: int | None
    body: dict[str, Any] | None
    #: Why the line has no answer (``400: Invalid request``, ``batch_expired: ...``); None for an answer.
    error: str | None

    @property
    def text(self) -> str:
        choices = (self.body or {}).get("choices") or [{}]
        return str(((choices[0] or {}).get("message") or {}).get("content") or "")

    @property
    def finish_reason(self) -> str | None:
        choices = (self.body or {}).get("choices") or [{}]
        return (choices[0] or {}).get("finish_reason")

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = (self.body or {}).get("usage")
        return usage if isinstance(usage, dict) else None

    def tokens(self) -> tuple[int | None, int | None]:
        usage = self.usage
        prompt, completion = usage_field(usage, "prompt_tokens"), usage_field(usage, "completion_tokens")
        return (None if prompt is None else int(prompt)), (None if completion is None else int(completion))


def _line(raw: dict[str, Any]) -> LineResult:
    custom_id = str(raw.get("custom_id"))
    response = raw.get("response") or None
    error = raw.get("error") or None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return LineResult(custom_id, None, None, f"{code}: {message}" if code else str(message))
    if not isinstance(response, dict):
        return LineResult(custom_id, None, None, "no response in the batch's result")
    status, body = response.get("status_code"), response.get("body")
    body = body if isinstance(body, dict) else None
    if status == 200 and body is not None and "error" not in body:
        return LineResult(custom_id, 200, body, None)
    detail = (body or {}).get("error") or {}
    message = detail.get("message") if isinstance(detail, dict) else str(detail)
    return LineResult(custom_id, status if isinstance(status, int) else None, body, f"{status}: {message or 'failed'}")


def parse_results(*files: bytes) -> dict[str, LineResult]:
    """The lines of a batch's output and error files, by ``custom_id`` (a line that is not JSON is skipped)."""
    found: dict[str, LineResult] = {}
    for data in files:
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                result = _line(line)
                if result.custom_id not in found or result.error is None:
                    found[result.custom_id] = result
    return found
