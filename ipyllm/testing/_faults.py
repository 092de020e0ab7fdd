"""What a test scripts (``Fault``: one misbehaviour per model request) and what it reads back (``RecordedRequest``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fault", "RecordedRequest"]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to one model request.

    kind is ``status`` (answer with HTTP error ``code``), ``drop`` (close the connection without an answer),
    ``slow`` (wait ``delay`` seconds, then answer normally), ``break_stream`` (a streamed answer that
    sends ``after_chunks`` content chunks, then drops the connection), ``echo_key`` (HTTP ``code`` whose
    message repeats the request's key, as OpenAI does for a wrong one), ``zero_choices`` (200 with
    ``"choices": []``, streamed or not, with ``finish_reason`` in the body when given), ``empty_stream``
    (200 with an empty body, as llama.cpp answers a streamed prompt longer than its context window) and
    ``reply`` (answer normally, with ``message`` as the reply's text: e.g. JSON that does not fit a schema).
    """

    kind: str
    code: int = 0
    retry_after: float | None = None
    delay: float = 0.0
    after_chunks: int = 0
    message: str = ""
    error_type: str = ""
    finish_reason: str = ""

    @classmethod
    def status(cls, code: int, message: str = "", retry_after: float | None = None, error_type: str = "") -> Fault:
        """Answer with HTTP ``code`` (and a ``Retry-After`` header when given); ``error_type`` is the body's ``type``."""
        return cls("status", code=code, message=message, retry_after=retry_after, error_type=error_type)

    @classmethod
    def permanent(cls, message: str = "Llama model must be created with embedding=True", code: int = 500) -> Fault:
        """A server error that no retry can fix, in the server's own words (llama.cpp's, by default)."""
        return cls.status(code, message, error_type="not_supported_error")

    @classmethod
    def echo_key(cls, code: int = 401) -> Fault:
        """HTTP ``code`` saying ``Incorrect API key provided: <the key sent>``, as OpenAI answers a wrong key."""
        return cls("echo_key", code=code)

    @classmethod
    def zero_choices(cls, finish_reason: str = "") -> Fault:
        """200 with ``"choices": []`` (a filtered or truncated answer); ``finish_reason`` rides along when given."""
        return cls("zero_choices", finish_reason=finish_reason)

    @classmethod
    def empty_stream(cls) -> Fault:
        """200 with an empty body: what llama.cpp sends for a streamed prompt longer than its context window."""
        return cls("empty_stream")

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0) -> Fault:
        return cls.status(429, "Rate limit reached (stub)", retry_after)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        return cls("slow", delay=delay)

    @classmethod
    def break_stream(cls, after_chunks: int = 0) -> Fault:
        return cls("break_stream", after_chunks=after_chunks)

    @classmethod
    def reply(cls, text: str) -> Fault:
        """Answer with ``text`` instead of the usual echo."""
        return cls("reply", message=text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse the command-line form: ``429``, ``429:2`` (Retry-After 2 s), ``drop``, ``slow:3``,
        ``break:2``, ``echo`` (``echo:403``), ``zero``, ``empty``, ``permanent``."""
        name, _, arg = text.partition(":")
        if name.isdigit():
            return cls.status(int(name), retry_after=float(arg) if arg else None)
        if name == "drop":
            return cls.drop()
        if name == "slow":
            return cls.slow(float(arg or 1))
        if name == "break":
            return cls.break_stream(int(arg or 0))
        if name == "echo":
            return cls.echo_key(int(arg or 401))
        if name == "zero":
            return cls.zero_choices(arg)
        if name == "empty":
            return cls.empty_stream()
        if name == "permanent":
            return cls.permanent(arg) if arg else cls.permanent()
        raise ValueError(
            f"unknown fault {text!r}: use a status code (429, 429:2), drop, slow:SECONDS, break:N, echo, zero, empty or permanent"
        )


@dataclass
class RecordedRequest:
    """What the server received: method, path, query, headers and the JSON body (for an upload to ``/v1/files``:
    its ``purpose``, ``filename`` and ``bytes``)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)
    fault: str = ""
    #: When the request arrived (``time.time()``).
    time: float = 0.0

    @property
    def model(self) -> str | None:
        return self.body.get("model")

    @property
    def cache_control_markers(self) -> int:
        """How many blocks of the body carry ``cache_control`` (Anthropic's prompt-cache breakpoints)."""

        def count(value: Any) -> int:
            if isinstance(value, dict):
                return ("cache_control" in value) + sum(count(v) for k, v in value.items() if k != "cache_control")
            return sum(count(v) for v in value) if isinstance(value, list) else 0

        return count(self.body)
