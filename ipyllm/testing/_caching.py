"""The stub's prompt cache: prompts as token sequences, and the prefixes it has seen, as providers cache them.

A prompt is a sequence of the stub's tokens (words and punctuation marks, as ``count_tokens``; made by
``_replies.prompt_sequence``): for each message in order, 3 tokens for its turn (``<|start|>``, the role,
``<|sep|>``) then its content's tokens; then 3 that open the reply. Its length is the prompt's
``prompt_tokens``, so a test can work out a shared prefix: a system message of S tokens before a user message
whose first U tokens two requests share gives a shared prefix of ``3 + S + 3 + U`` tokens.

- OpenAI caches on its own (``PrefixCache.openai``): a request whose first tokens repeat the first tokens of an
  earlier request seen within ``ttl`` seconds (of that request's last use), over at least ``minimum`` (1,024)
  tokens, reports ``cached_tokens`` = the longest such shared prefix rounded down to a multiple of 128
  (OpenAI's rule: hits come in 128-token increments from 1,024). ``1,500`` shared tokens give ``1,408``;
  ``1,000`` give none.
- Anthropic caches where the request says so (``PrefixCache.anthropic``): each block carrying ``cache_control``
  ends a cache breakpoint, the prefix up to and including that block. A breakpoint shorter than ``minimum`` is
  not cached. The longest breakpoint already in the cache is read (``cache_read_input_tokens`` = its length);
  the tokens from there to the last breakpoint are written (``cache_creation_input_tokens``); neither is
  counted in ``input_tokens``. An entry lives ``ttl`` seconds from its last use (3,600 for
  ``{"type": "ephemeral", "ttl": "1h"}``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence

__all__ = ["PrefixCache"]

#: OpenAI's cache hits come in multiples of this many tokens.
OPENAI_INCREMENT = 128


def _digests(tokens: Sequence[str], ends: Iterable[int]) -> dict[int, bytes]:
    """The digest of ``tokens[:end]`` for each end, in one pass over the tokens."""
    wanted = sorted(set(ends))
    found: dict[int, bytes] = {}
    running = hashlib.blake2b(digest_size=16)
    done = 0
    for end in wanted:
        for token in tokens[done:end]:
            running.update(token.encode())
            running.update(b"\x00")
        done = end
        found[end] = running.copy().digest()
    return found


class PrefixCache:
    """The prefixes of prompts seen lately, by digest, with when each was last used; thread-safe.

    Parameters
    ----------
    minimum
        The shortest prefix cached, in tokens (1,024: OpenAI's, and Anthropic's for Sonnet and Haiku 3.5).
    ttl
        Seconds an entry lives after its last use (5 minutes, as both providers by default).
    """

    def __init__(self, minimum: int = 1024, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.minimum = minimum
        self.ttl = ttl
        self._clock = clock
        self._seen: dict[bytes, tuple[float, float]] = {}  # digest -> (last use, ttl)
        self._lock = threading.Lock()

    def _now(self) -> float:
        return self._clock()

    def _live(self, digest: bytes, now: float) -> bool:
        entry = self._seen.get(digest)
        return entry is not None and now - entry[0] <= entry[1]

    def _prune(self, now: float) -> None:
        if len(self._seen) > 10_000:
            self._seen = {d: e for d, e in self._seen.items() if now - e[0] <= e[1]}

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def openai(self, tokens: Sequence[str]) -> int:
        """The prompt's cached tokens as OpenAI reports them; the prompt's prefixes are remembered for later requests."""
        if len(tokens) < self.minimum:
            return 0
        first = max(OPENAI_INCREMENT, -(-self.minimum // OPENAI_INCREMENT) * OPENAI_INCREMENT)
        digests = _digests(tokens, range(first, len(tokens) + 1, OPENAI_INCREMENT))
        with self._lock:
            now = self._now()
            cached = max((end for end, digest in digests.items() if self._live(b"o" + digest, now)), default=0)
            for digest in digests.values():
                self._seen[b"o" + digest] = (now, self.ttl)
            self._prune(now)
        return cached

    def anthropic(self, tokens: Sequence[str], breakpoints: Sequence[tuple[int, float | None]]) -> tuple[int, int]:
        """``(cache_read_input_tokens, cache_creation_input_tokens)`` for breakpoints ``(end, ttl or None)``."""
        marks = {end: ttl for end, ttl in breakpoints if end >= self.minimum}
        if not marks:
            return 0, 0
        digests = _digests(tokens, marks)
        with self._lock:
            now = self._now()
            read = max((end for end, digest in digests.items() if self._live(b"a" + digest, now)), default=0)
            for end, digest in digests.items():
                self._seen[b"a" + digest] = (now, marks[end] or self.ttl)
            self._prune(now)
        return read, max(marks) - read
