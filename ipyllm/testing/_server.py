"""``StubServer``: the stub's life cycle (a thread serving on loopback), its fault script, its record of requests."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ipyllm.testing._anthropic import anthropic_prompt
from ipyllm.testing._batches import Batches, BatchScript
from ipyllm.testing._caching import PrefixCache
from ipyllm.testing._faults import Fault, RecordedRequest
from ipyllm.testing._handler import Handler, Server
from ipyllm.testing._replies import chat_payload, chat_reply, content_problem, embeddings_payload, prompt_sequence

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
    prompt_caching
        Report OpenAI's automatic prompt caching: a chat request (live or a batch line) that repeats the first
        ``cache_minimum`` or more tokens of a request seen within ``cache_ttl`` seconds reports
        ``usage.prompt_tokens_details.cached_tokens`` = the shared prefix rounded down to a multiple of 128 (the
        rule and how the prompt is counted: ``ipyllm.testing._caching``). Off by default, so that repeated long
        prompts cost what they always did; ``cached_tokens`` (a fixed figure), when set, wins.
    cache_minimum, cache_ttl
        The shortest prefix cached (1,024 tokens: OpenAI's, and Anthropic's for Sonnet and Haiku 3.5) and how long
        an entry lives after its last use (300 s), for OpenAI-style caching and for Anthropic's ``cache_control``
        (which ``POST /v1/messages`` always honours, as Anthropic does).

    Each is also an attribute, to change while the server runs. The Files and Batches APIs keep their state in
    ``batches`` (``_batches.Batches``); ``script_batches`` says how the next batches run.
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
        prompt_caching: bool = False,
        cache_minimum: int = 1024,
        cache_ttl: float = 300.0,
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
        self.prompt_caching = prompt_caching
        self.prompt_cache = PrefixCache(cache_minimum, cache_ttl)
        self.batches = Batches(self._answer_line)
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._api_faults: deque[Fault] = deque()
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

    def script_api(self, *faults: Fault) -> StubServer:
        """Queue faults for the Files and Batches APIs; each of their requests takes the next one."""
        with self._lock:
            self._api_faults.extend(faults)
        return self

    def script_batches(self, *scripts: BatchScript) -> StubServer:
        """Say how the next batches run; each batch created takes the next script (else ``BatchScript()``)."""
        self.batches.script(*scripts)
        return self

    def release_batches(self) -> None:
        """Let held batches (``BatchScript(hold=True)``) go on from ``in_progress``."""
        self.batches.release()

    def requests_to(self, path: str, method: str = "POST") -> list[RecordedRequest]:
        """The recorded requests to ``path`` (with or without its ``/v1``), e.g. ``requests_to("/v1/files")``."""
        wanted = path.removeprefix("/v1")
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.removeprefix("/v1") == wanted]

    def reset(self) -> None:
        """Forget scripted faults and batch scripts, recorded requests and the prompt cache (files and batches stay)."""
        with self._lock:
            self._faults.clear()
            self._api_faults.clear()
            self.requests.clear()
        self.batches.reset()
        self.prompt_cache.clear()

    @property
    def cache_minimum(self) -> int:
        return self.prompt_cache.minimum

    @cache_minimum.setter
    def cache_minimum(self, tokens: int) -> None:
        self.prompt_cache.minimum = tokens

    @property
    def cache_ttl(self) -> float:
        return self.prompt_cache.ttl

    @cache_ttl.setter
    def cache_ttl(self, seconds: float) -> None:
        self.prompt_cache.ttl = seconds

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _next_api_fault(self) -> Fault | None:
        with self._lock:
            return self._api_faults.popleft() if self._api_faults else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _accounted(self, usage: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A chat answer's usage with this server's accounting modes applied (the prompt cache sees ``messages``)."""
        usage = dict(usage)
        cached = self.prompt_cache.openai(prompt_sequence(messages or [])) if self.prompt_caching else 0
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, usage["prompt_tokens"])}
        elif cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        if self.usage_cost is not None:
            usage["cost"] = self.usage_cost
        return usage

    def _anthropic_usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, int]:
        """A Messages API answer's usage: what the request's ``cache_control`` markers read from and wrote to the cache."""
        tokens, breakpoints = anthropic_prompt(body)
        read, written = self.prompt_cache.anthropic(tokens, breakpoints)
        return {
            "input_tokens": len(tokens) - read - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output_tokens,
        }

    def _answer_line(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A batch line's answer, as the live route answers the same body."""
        model = str(body.get("model") or "stub")
        if endpoint.endswith("/embeddings"):
            return 200, embeddings_payload(model, body, self.report_usage)
        if (problem := content_problem(body.get("messages"))) is not None:
            return 400, problem
        text, usage, finish = chat_reply(model, body, None, self.reply_tokens)
        usage = self._accounted(usage, body.get("messages"))
        return 200, chat_payload(model, text, finish, usage if self.report_usage else None)

    def _cost_headers(self) -> dict[str, str]:
        return {} if self.cost_header is None else {"x-litellm-response-cost": repr(float(self.cost_header))}

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<StubServer {self.base_url} {state}, {len(self.requests)} requests>"


def script_remote(url: str, *faults: Fault | str, batches: Sequence[BatchScript | str] = (), release: bool = False) -> None:
    """Script a stub server running in another process (``url`` as ``StubServer.url``): faults, how the next batches
    run (``BatchScript`` or its command-line form) and, with ``release``, let held batches go on."""
    import urllib.request

    items = [asdict(f) if isinstance(f, Fault) else f for f in faults]
    scripts = [b.to_dict() if isinstance(b, BatchScript) else b for b in batches]
    base = url.rstrip("/").removesuffix("/v1")
    if release:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/_stub/release", data=b"{}", method="POST"), timeout=10) as response:
            response.read()
    if not items and not scripts:
        return
    request = urllib.request.Request(
        f"{base}/_stub/script",
        data=json.dumps({"faults": items, "batches": scripts}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
