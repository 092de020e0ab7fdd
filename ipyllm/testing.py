"""An OpenAI-compatible stub server on loopback, with scripted faults.

Use it to run notebooks and tests offline, without a key and without spending money::

    from ipyllm.testing import StubServer, Fault

    with StubServer() as stub:
        stub.script(Fault.rate_limit(retry_after=1), Fault.status(503))
        ipyllm.config.base_url = stub.base_url
        ipyllm.config.api_key = "sk-stub"
        ipyllm.complete("hello")          # answered on the third request
        assert len(stub.requests) == 3

The server speaks the parts of the OpenAI API that ipyllm uses: ``POST /v1/chat/completions`` (plain
and streamed, with ``usage`` on the last chunk when ``stream_options.include_usage`` is asked for),
``POST /v1/embeddings``, ``GET /v1/models``, and the Azure forms
``/openai/deployments/{name}/chat/completions`` and ``.../embeddings``. Replies are deterministic:
``"[{model}] {echo of the last user message}"`` (``reply_tokens`` makes them longer), cut at the request's
``max_tokens`` / ``max_completion_tokens`` with the finish reason ``length``, as providers do; tokens are
counted as words and punctuation marks.
Accounting modes, as real providers differ: no usage in streams (``usage_in_stream=False``, as llama.cpp's
server) or in any answer (``report_usage=False``), prompt tokens served from a prompt cache
(``cached_tokens``), and the call's cost reported by the provider (``usage_cost``, as OpenRouter's
``usage.cost``) or by a proxy (``cost_header``, as litellm's ``x-litellm-response-cost``).

Faults are consumed one per model request (chat or embeddings), in order; when the script is empty the
server answers normally. ``POST /_stub/script`` with a JSON list of faults scripts a running server from
another process (the form ``python -m ipyllm.testing`` prints how).

``offline_unless_configured()`` is the first cell of ipyllm's notebooks: it leaves a configured provider
alone, and otherwise starts a stub server and points the session at it, saying so in one line.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ipyllm._config import config
from ipyllm._litellm import check_environment, resolve_provider
from ipyllm._locations import SQLiteFile, default_usage_db

__all__ = ["Fault", "RecordedRequest", "StubServer", "count_tokens", "fit_schema", "offline_unless_configured", "provider_configured"]

STUB_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "stub-local")
EMBEDDING_DIMENSIONS = 8
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_AZURE_PATH = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<endpoint>chat/completions|embeddings)$")


def count_tokens(text: str) -> int:
    """The stub's own tokenizer: words and punctuation marks (at least 1 for a non-empty text)."""
    return len(_TOKEN_RE.findall(text))


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
    """What the server received: method, path, query, headers and the JSON body."""

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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's delayed ACK
    # add ~40 ms to every answer, a latency no provider has.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    # -- plumbing -------------------------------------------------------------------------------------
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        return body if isinstance(body, dict) else {"_raw": body}

    # -- routes ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "ipyllm-stub"} for m in STUB_MODELS]
            self._send_json(200, {"object": "list", "data": data})
        elif path in ("/", "/health", "/_stub/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        body = self._read_body()
        if path == "/_stub/script":
            faults = body.get("faults", [])
            self.server.stub.script(*(Fault.from_dict(f) if isinstance(f, dict) else Fault.parse(str(f)) for f in faults))
            self._send_json(200, {"scripted": len(faults)})
            return
        if path == "/_stub/reset":
            self.server.stub.reset()
            self._send_json(200, {"reset": True})
            return

        endpoint = None
        deployment = None
        if path in ("/v1/chat/completions", "/chat/completions"):
            endpoint = "chat"
        elif path in ("/v1/embeddings", "/embeddings"):
            endpoint = "embeddings"
        elif (match := _AZURE_PATH.match(path)) is not None:
            endpoint = "chat" if match["endpoint"] == "chat/completions" else "embeddings"
            deployment = match["deployment"]
        if endpoint is None:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})
            return

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        arrived = time.time()
        fault = self.server.stub._next_fault()
        self.server.stub._record(
            RecordedRequest(
                method="POST",
                path=path,
                query=query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                fault=fault.kind if fault else "",
                time=arrived,
            )
        )
        model = body.get("model") or deployment or "stub"
        if fault is not None:
            if fault.kind == "status":
                self._send_error(fault)
                return
            if fault.kind == "echo_key":
                self._send_error(
                    Fault.status(fault.code, f"Incorrect API key provided: {_sent_key(self.headers)}", error_type="invalid_request_error")
                )
                return
            if fault.kind == "empty_stream":
                self._send_empty()
                return
            if fault.kind == "zero_choices" and not body.get("stream"):
                self._zero_choices(model, fault)
                return
            if fault.kind == "drop":
                self._drop()
                return
            if fault.kind == "slow":
                time.sleep(fault.delay)
        if self.server.stub.delay:
            time.sleep(self.server.stub.delay)
        scripted = fault.message if fault is not None and fault.kind == "reply" else None
        if endpoint == "embeddings":
            self._embeddings(model, body)
        elif body.get("stream"):
            self._chat_stream(model, body, fault, scripted)
        else:
            self._chat(model, body, scripted)

    def _send_error(self, fault: Fault) -> None:
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
        payload = {"error": {"message": message, "type": kind, "code": error_type.get(status)}}
        self._send_json(status, payload, headers)

    def _send_empty(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _zero_choices(self, model: str, fault: Fault) -> None:
        payload: dict[str, Any] = {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model}
        payload["choices"] = []
        if fault.finish_reason:
            payload["finish_reason"] = fault.finish_reason
        payload["usage"] = {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
        self._send_json(200, payload)

    # -- answers --------------------------------------------------------------------------------------
    def _chat(self, model: str, body: dict[str, Any], scripted: str | None = None) -> None:
        stub = self.server.stub
        text, usage, finish = _reply(model, body, scripted, stub.reply_tokens)
        payload: dict[str, Any] = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        }
        if stub.report_usage:
            payload["usage"] = stub._accounted(usage)
        self._send_json(200, payload, stub._cost_headers())

    def _chat_stream(self, model: str, body: dict[str, Any], fault: Fault | None, scripted: str | None = None) -> None:
        stub = self.server.stub
        text, usage, finish = _reply(model, body, scripted, stub.reply_tokens)
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        include_usage = asked and stub.usage_in_stream and stub.report_usage
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for name, value in stub._cost_headers().items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None, with_usage: bool = False) -> bytes:
            chunk: dict[str, Any] = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if not with_usage else [],
            }
            if with_usage:
                chunk["usage"] = stub._accounted(usage)
            return f"data: {json.dumps(chunk)}\n\n".encode()

        pieces = re.findall(r"\S+\s*", text)
        if fault is not None and fault.kind == "zero_choices":
            extra = {"finish_reason": fault.finish_reason} if fault.finish_reason else {}
            chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], **extra}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            return
        try:
            self.wfile.write(event({"role": "assistant", "content": ""}))
            for index, piece in enumerate(pieces):
                if fault is not None and fault.kind == "break_stream" and index >= fault.after_chunks:
                    self.wfile.flush()
                    self._drop()
                    return
                self.wfile.write(event({"content": piece}))
                self.wfile.flush()
                if self.server.stub.chunk_delay:
                    time.sleep(self.server.stub.chunk_delay)
            self.wfile.write(event({}, finish=finish))
            if include_usage:
                self.wfile.write(event({}, with_usage=True))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _embeddings(self, model: str, body: dict[str, Any]) -> None:
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
        if self.server.stub.report_usage:
            payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._send_json(200, payload)


def _sent_key(headers: Any) -> str:
    """The key a request carried: ``Authorization: Bearer <key>`` (OpenAI) or ``api-key`` (Azure)."""
    auth = headers.get("Authorization") or ""
    return auth.removeprefix("Bearer ").strip() or (headers.get("api-key") or "").strip()


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _reply(model: str, body: dict[str, Any], scripted: str | None = None, reply_tokens: int = 0) -> tuple[str, dict[str, int], str]:
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
    prompt_tokens = sum(count_tokens(_message_text(m.get("content"))) + 3 for m in messages) + 3
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: StubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client that gave up (a cancelled call) is not the server's error.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class StubServer:
    """An OpenAI-compatible server on 127.0.0.1 for tests and offline notebooks.

    Parameters
    ----------
    port
        0 (the default) picks a free port.
    usage_in_stream
        When False, streamed answers never carry ``usage`` (as llama.cpp's server), so clients must count.
    chunk_delay
        Seconds between streamed chunks, to watch a reply arrive.
    delay
        Seconds before every answer (a provider's latency); requests are served concurrently.
    report_usage
        When False, no answer carries ``usage`` (plain, streamed or embeddings).
    cached_tokens
        Prompt tokens reported as served from the provider's prompt cache
        (``usage.prompt_tokens_details.cached_tokens``, at most the prompt's tokens).
    usage_cost
        A cost in USD reported in ``usage.cost`` of chat answers, as OpenRouter does; None: none.
    cost_header
        A cost in USD sent in an ``x-litellm-response-cost`` header on chat answers, as a litellm proxy
        does; None: none.
    reply_tokens
        Make every chat reply at least this many tokens long (the echo, then ``more0 more1 ...``), as a model that
        writes at length; still cut at the request's ``max_tokens`` / ``max_completion_tokens`` (finish
        reason ``length``), as providers do.

    Each is also an attribute, to change while the server runs.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        usage_in_stream: bool = True,
        chunk_delay: float = 0.0,
        report_usage: bool = True,
        cached_tokens: int = 0,
        usage_cost: float | None = None,
        cost_header: float | None = None,
        delay: float = 0.0,
        reply_tokens: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.usage_in_stream = usage_in_stream
        self.chunk_delay = chunk_delay
        self.delay = delay
        self.report_usage = report_usage
        self.cached_tokens = cached_tokens
        self.usage_cost = usage_cost
        self.cost_header = cost_header
        self.reply_tokens = reply_tokens
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> StubServer:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.stub = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ipyllm-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``.../v1``) to give ``LLM_BASE_URL`` / ``config.base_url``."""
        return f"{self.url}/v1"

    # -- scripting ------------------------------------------------------------------------------------
    def script(self, *faults: Fault) -> StubServer:
        """Queue faults; each model request takes the next one."""
        with self._lock:
            self._faults.extend(faults)
        return self

    def reset(self) -> None:
        """Forget scripted faults and recorded requests."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _accounted(self, usage: dict[str, Any]) -> dict[str, Any]:
        """A chat answer's usage with this server's accounting modes applied."""
        usage = dict(usage)
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, usage["prompt_tokens"])}
        if self.usage_cost is not None:
            usage["cost"] = self.usage_cost
        return usage

    def _cost_headers(self) -> dict[str, str]:
        return {} if self.cost_header is None else {"x-litellm-response-cost": repr(float(self.cost_header))}

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<StubServer {self.base_url} {state}, {len(self.requests)} requests>"


def script_remote(url: str, *faults: Fault | str) -> None:
    """Script the faults of a stub server running in another process (``url`` as ``StubServer.url``)."""
    import urllib.request

    items = [asdict(f) if isinstance(f, Fault) else f for f in faults]
    request = urllib.request.Request(
        f"{url.rstrip('/').removesuffix('/v1')}/_stub/script",
        data=json.dumps({"faults": items}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# -- notebooks: a real provider when one is configured, the stub server otherwise ---------------------------

#: The stub server started by ``offline_unless_configured`` (kept, so that re-running the cell reuses it).
_offline: StubServer | None = None


def provider_configured() -> str | None:
    """How a real provider is configured for this session, in a few words; None when it is not.

    A provider counts as configured when the session has an API key (``LLM_API_KEY``, ``%llm_config``,
    the picker) or a base URL (``LLM_BASE_URL``: a proxy or a local server), or when litellm finds the
    model's own key variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...) in the environment. A model of a
    local server that needs no key (``ollama/llama3``) counts too.
    """
    if config.base_url:
        return f"the server at {config.base_url} (base_url)"
    provider = resolve_provider(config.model, None)
    where = f"{provider or 'the provider'} (model {config.model})"
    if config.api_key:
        return f"{where}, with the session's API key"
    check = check_environment(config.model)
    if provider is not None and check.in_environment:
        return f"{where}, with its key from the environment"
    if provider is not None and check.keyless:
        return f"{where}, a local server that needs no key"
    return None


def offline_unless_configured(*, always: bool = False) -> StubServer | None:
    """Point the session at a local stub server unless a real provider is configured; say which in one line.

    The first cell of ipyllm's notebooks, so that they run unchanged with a real provider and offline
    without one. When a provider is configured (see ``provider_configured``), nothing changes and None is
    returned. Otherwise a ``StubServer`` is started (once per kernel: a re-run reuses it) and the session
    points at it: ``base_url``, a dummy ``api_key``, and ``gpt-4o-mini`` unless the model is already an
    OpenAI-style name. Stub calls are priced as the model's real calls would be (nothing is spent) and go
    to a ledger file of their own, ``stub-usage.sqlite`` beside the default one, so they never count
    against real spend or ``daily_budget_usd``; an explicit ``usage_db`` is kept.

    Parameters
    ----------
    always
        Use the stub server even when a provider is configured (a notebook that scripts faults).

    Returns
    -------
    StubServer or None
        The running stub server, to script faults with ``stub.script(...)``; None with a real provider.
    """
    global _offline
    reused = _offline is not None and _offline._server is not None and config.base_url == _offline.base_url
    configured = None if reused else provider_configured()
    if configured is not None and not always:
        print(f"ipyllm: calls go to {configured}: real calls, which a paid provider charges for (budget_usd caps the spend).")
        return None
    if _offline is None or _offline._server is None:
        _offline = StubServer().start()
    settings: dict[str, Any] = {"base_url": _offline.base_url, "api_key": "sk-stub"}
    if resolve_provider(config.model, None) != "openai":
        settings["model"] = "gpt-4o-mini"
    if config.usage_db is None:
        settings["usage_db"] = SQLiteFile(default_usage_db().path.with_name("stub-usage.sqlite"))
    config.update(**settings)
    reason = "this notebook scripts its faults" if always else "no provider is configured"
    advice = "" if always else " To use a real model, set OPENAI_API_KEY or LLM_API_KEY (and LLM_MODEL), then restart the kernel."
    print(
        f"ipyllm: replies come from the local stub server at {_offline.base_url} ({reason}): they echo the prompt, "
        f"nothing is spent, and costs show what {config.model} would charge.{advice}"
    )
    return _offline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ipyllm.testing", description="Run ipyllm's OpenAI-compatible stub server on loopback.")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="F",
        help="queue a fault: 429, 429:2 (Retry-After), 503, drop, slow:3, break:2, echo, zero, empty, permanent",
    )
    parser.add_argument("--no-stream-usage", action="store_true", help="never send usage in streamed answers")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer (the provider's latency)")
    parser.add_argument("--no-usage", action="store_true", help="never send usage (plain, streamed or embeddings)")
    parser.add_argument("--cached-tokens", type=int, default=0, metavar="N", help="report N prompt tokens as served from a prompt cache")
    parser.add_argument("--usage-cost", type=float, metavar="USD", help="report this cost in usage.cost (as OpenRouter)")
    parser.add_argument("--cost-header", type=float, metavar="USD", help="send this cost in x-litellm-response-cost (as a litellm proxy)")
    parser.add_argument("--reply-tokens", type=int, default=0, metavar="N", help="make every chat reply at least N tokens long")
    args = parser.parse_args(argv)
    try:
        faults = [Fault.parse(f) for f in args.fault]
    except ValueError as error:
        parser.error(str(error))
    stub = StubServer(
        args.port,
        usage_in_stream=not args.no_stream_usage,
        chunk_delay=args.chunk_delay,
        report_usage=not args.no_usage,
        cached_tokens=args.cached_tokens,
        usage_cost=args.usage_cost,
        cost_header=args.cost_header,
        delay=args.delay,
        reply_tokens=args.reply_tokens,
    ).start()
    stub.script(*faults)
    print(f"ipyllm stub server on {stub.base_url}", flush=True)
    print(f"  export LLM_BASE_URL={stub.base_url} LLM_API_KEY=sk-stub", flush=True)
    print(f'  script faults: curl -d \'{{"faults": ["429", "503"]}}\' {stub.url}/_stub/script', flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.stop()


if __name__ == "__main__":
    main()
