"""``python -m ipyllm.testing``: the stub server from a shell, faults from the command line."""

from __future__ import annotations

import argparse
import time

from ipyllm.testing._batches import BatchScript
from ipyllm.testing._faults import Fault
from ipyllm.testing._server import StubServer

__all__ = ["main"]


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
    parser.add_argument(
        "--batch",
        action="append",
        default=[],
        metavar="S",
        help="how the next batch runs: polls=2,seconds=0.5,hold,progress=3,fail_lines=1;4,fail_matching=REGEX,end=expired (repeatable)",
    )
    parser.add_argument("--prompt-caching", action="store_true", help="report OpenAI-style cached_tokens on repeated prefixes")
    parser.add_argument("--cache-minimum", type=int, default=1024, metavar="N", help="the shortest prefix cached, in tokens")
    parser.add_argument("--cache-ttl", type=float, default=300.0, metavar="S", help="seconds a cached prefix lives after its last use")
    args = parser.parse_args(argv)
    try:
        faults = [Fault.parse(f) for f in args.fault]
        batches = [BatchScript.parse(b) for b in args.batch]
    except (ValueError, TypeError) as error:
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
        prompt_caching=args.prompt_caching,
        cache_minimum=args.cache_minimum,
        cache_ttl=args.cache_ttl,
    ).start()
    stub.script(*faults)
    stub.script_batches(*batches)
    print(f"ipyllm stub server on {stub.base_url}", flush=True)
    print(f"  export LLM_BASE_URL={stub.base_url} LLM_API_KEY=sk-stub", flush=True)
    print(f'  script faults: curl -d \'{{"faults": ["429", "503"]}}\' {stub.url}/_stub/script', flush=True)
    print(f'  script batches: curl -d \'{{"batches": ["polls=2,fail_lines=0"]}}\' {stub.url}/_stub/script', flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.stop()
