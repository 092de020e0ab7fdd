"""``StubServer``: the stub's life cycle (a thread serving on loopback), its fault script, its record of requests."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import asdict
from typing import Any

from ipyllm.testing._faults import Fault, RecordedRequest
from ipyllm.testing._handler import Handler, Server

__all__ = ["StubServer", "script_remote"]


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
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> StubServer:
        if self._server is not None:
            return self
        server = Server((self.host, self.port), Handler)
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
