"""The stub server's HTTP side: routes, scripted faults applied to one request, answers written to the socket.

What the answers say is made in ``_replies``; what the handler needs of the server's state (its faults,
its recorded requests, its accounting modes) is the ``Stub`` protocol, which ``StubServer`` fulfils.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ipyllm.testing._anthropic import anthropic_error, anthropic_reply, message_events, message_payload
from ipyllm.testing._batches import Batches, BatchScript
from ipyllm.testing._batchroutes import batch_api, is_batch_api
from ipyllm.testing._faults import Fault, RecordedRequest
from ipyllm.testing._replies import (
    DONE,
    chat_payload,
    chat_reply,
    chunk,
    content_problem,
    embeddings_payload,
    error_payload,
    models_payload,
    sent_key,
    stream_pieces,
    usage_chunk,
    zero_choices_chunk,
    zero_choices_payload,
)

__all__ = ["Handler", "Server", "Stub"]

_AZURE_PATH = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<endpoint>chat/completions|embeddings)$")


class Stub(Protocol):
    """What the handler asks of the stub server: its settings, its fault script and its record of requests."""

    delay: float
    chunk_delay: float
    usage_in_stream: bool
    report_usage: bool
    reply_tokens: int
    batches: Batches

    def script(self, *faults: Fault) -> Any: ...
    def script_batches(self, *scripts: BatchScript) -> Any: ...
    def reset(self) -> None: ...
    def _next_fault(self) -> Fault | None: ...
    def _next_api_fault(self) -> Fault | None: ...
    def _record(self, request: RecordedRequest) -> None: ...
    def _accounted(self, usage: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> dict[str, Any]: ...
    def _anthropic_usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, int]: ...
    def _cost_headers(self) -> dict[str, str]: ...


def route(path: str) -> tuple[str | None, str | None]:
    """The model endpoint a path asks for (``chat``, ``embeddings`` or None) and the Azure deployment in it."""
    if path in ("/v1/chat/completions", "/chat/completions"):
        return "chat", None
    if path in ("/v1/embeddings", "/embeddings"):
        return "embeddings", None
    if (match := _AZURE_PATH.match(path)) is not None:
        return ("chat" if match["endpoint"] == "chat/completions" else "embeddings"), match["deployment"]
    return None, None


class Plumbing(BaseHTTPRequestHandler):
    """The handler's plumbing: JSON in and out, a dropped connection, the stub's settings."""

    server: Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's delayed ACK
    # add ~40 ms to every answer, a latency no provider has.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

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
        raw = self._raw_body()
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        return body if isinstance(body, dict) else {"_raw": body}

    def _no_route(self, path: str) -> None:
        self._send_json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _recorded(self, method: str, path: str, query: str, body: dict[str, Any], fault: Fault | None, arrived: float) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        queried = {k: v[-1] for k, v in parse_qs(query).items()}
        self.server.stub._record(RecordedRequest(method, path, queried, headers, body, fault=fault.kind if fault else "", time=arrived))


class Handler(Plumbing):
    def _batch_api(self, method: str) -> None:
        """The Files and Batches APIs: recorded, open to the faults scripted with ``script_api``."""
        parts = urlsplit(self.path)
        raw = self._raw_body()
        stub = self.server.stub
        arrived = time.time()
        fault = stub._next_api_fault()
        if fault is not None and self._answered_by(fault, "", {}):  # before the request acts: a failed poll moves nothing on
            self._recorded(method, parts.path, parts.query, {}, fault, arrived)
            return
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        status, payload, recorded = batch_api(stub.batches, method, parts.path, query, raw, self.headers.get("Content-Type") or "")
        self._recorded(method, parts.path, parts.query, recorded, fault, arrived)
        if isinstance(payload, bytes):
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:
            self._send_json(status, payload)

    # -- routes ---------------------------------------------------------------------------------------
    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if is_batch_api(path):
            self._batch_api("DELETE")
        else:
            self._no_route(path)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if is_batch_api(path):
            self._batch_api("GET")
        elif path in ("/v1/models", "/models"):
            self._send_json(200, models_payload())
        elif path in ("/", "/health", "/_stub/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._no_route(path)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if is_batch_api(path):
            self._batch_api("POST")
            return
        body = self._read_body()
        stub = self.server.stub
        if path == "/_stub/script":
            faults = body.get("faults", [])
            stub.script(*(Fault.from_dict(f) if isinstance(f, dict) else Fault.parse(str(f)) for f in faults))
            scripts = body.get("batches", [])
            stub.script_batches(*(BatchScript.from_dict(b) if isinstance(b, dict) else BatchScript.parse(str(b)) for b in scripts))
            self._send_json(200, {"scripted": len(faults), "batches": len(scripts)})
            return
        if path == "/_stub/release":
            stub.batches.release()
            self._send_json(200, {"released": True})
            return
        if path == "/_stub/reset":
            stub.reset()
            self._send_json(200, {"reset": True})
            return
        if path in ("/v1/messages", "/messages"):
            self._anthropic(path, parts.query, body)
            return
        endpoint, deployment = route(path)
        if endpoint is None:
            self._no_route(path)
            return

        arrived = time.time()
        fault = stub._next_fault()
        self._recorded("POST", path, parts.query, body, fault, arrived)
        model = body.get("model") or deployment or "stub"
        if fault is not None and self._answered_by(fault, model, body):
            return
        if endpoint == "chat" and (problem := content_problem(body.get("messages"))) is not None:
            self._send_json(400, problem)  # streamed or not: refused before any answer starts, as OpenAI refuses it
            return
        if stub.delay:
            time.sleep(stub.delay)
        scripted = fault.message if fault is not None and fault.kind == "reply" else None
        if endpoint == "embeddings":
            self._send_json(200, embeddings_payload(model, body, stub.report_usage))
        elif body.get("stream"):
            self._chat_stream(model, body, fault, scripted)
        else:
            text, usage, finish = chat_reply(model, body, scripted, stub.reply_tokens)
            usage = stub._accounted(usage, body.get("messages"))  # always: the prompt cache sees every request
            payload = chat_payload(model, text, finish, usage if stub.report_usage else None)
            self._send_json(200, payload, stub._cost_headers())

    def _anthropic(self, path: str, query: str, body: dict[str, Any]) -> None:
        """Anthropic's Messages API: plain or streamed, with ``usage`` and its cache fields; faults in Anthropic's form."""
        stub = self.server.stub
        arrived = time.time()
        fault = stub._next_fault()
        self._recorded("POST", path, query, body, fault, arrived)
        if fault is not None and fault.kind in ("status", "echo_key"):
            payload, extra = anthropic_error(fault)
            self._send_json(fault.code, payload, extra)
            return
        if fault is not None and fault.kind == "drop":
            self._drop()
            return
        time.sleep(stub.delay + (fault.delay if fault is not None and fault.kind == "slow" else 0.0))
        model = str(body.get("model") or "claude")
        scripted = fault.message if fault is not None and fault.kind == "reply" else None
        text, stop_reason, output_tokens = anthropic_reply(model, body, scripted, stub.reply_tokens)
        usage = stub._anthropic_usage(body, output_tokens)
        if not body.get("stream"):
            self._send_json(200, message_payload(model, text, stop_reason, usage))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in message_events(model, text, stop_reason, usage):
                self.wfile.write(event)
                self.wfile.flush()
                if stub.chunk_delay:
                    time.sleep(stub.chunk_delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _answered_by(self, fault: Fault, model: str, body: dict[str, Any]) -> bool:
        """Apply a fault: True when it is the whole answer, False when the request is answered after it."""
        if fault.kind == "echo_key":
            fault = Fault.status(fault.code, f"Incorrect API key provided: {sent_key(self.headers)}", error_type="invalid_request_error")
        if fault.kind == "status":
            payload, headers = error_payload(fault)
            self._send_json(fault.code, payload, headers)
        elif fault.kind == "empty_stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault.kind == "zero_choices" and not body.get("stream"):
            self._send_json(200, zero_choices_payload(model, fault.finish_reason))
        elif fault.kind == "drop":
            self._drop()
        else:
            if fault.kind == "slow":
                time.sleep(fault.delay)
            return False
        return True

    def _chat_stream(self, model: str, body: dict[str, Any], fault: Fault | None, scripted: str | None) -> None:
        stub = self.server.stub
        text, usage, finish = chat_reply(model, body, scripted, stub.reply_tokens)
        usage = stub._accounted(usage, body.get("messages"))
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for name, value in stub._cost_headers().items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        created = int(time.time())
        if fault is not None and fault.kind == "zero_choices":
            self.wfile.write(zero_choices_chunk(model, created, fault.finish_reason))
            self.wfile.flush()
            return
        try:
            self.wfile.write(chunk(model, created, {"role": "assistant", "content": ""}))
            for index, piece in enumerate(stream_pieces(text)):
                if fault is not None and fault.kind == "break_stream" and index >= fault.after_chunks:
                    self.wfile.flush()
                    self._drop()
                    return
                self.wfile.write(chunk(model, created, {"content": piece}))
                self.wfile.flush()
                if stub.chunk_delay:
                    time.sleep(stub.chunk_delay)
            self.wfile.write(chunk(model, created, {}, finish))
            if asked and stub.usage_in_stream and stub.report_usage:
                self.wfile.write(usage_chunk(model, created, usage))
            self.wfile.write(DONE)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: Stub

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a cancelled call) is not the server's error.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)
