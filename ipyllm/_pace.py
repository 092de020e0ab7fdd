"""A batch's pace: how many of its calls may be in flight, and the pause every worker keeps after a rate limit.

A 429 pauses new attempts of every worker until its wait is over (the provider's Retry-After, else the retry
policy's jittered wait) and halves the number of calls in flight; each success adds back a little (additive
increase, multiplicative decrease). Restarts after a pause are spread over a tenth of it, so workers do not
retry in lockstep.

A 429 to a request sent before the pause began belongs to that pause, even when it comes back after the pause
is over (a slow answer, a busy machine): it lengthens the wait, but neither halves the calls in flight again nor
counts as another pause.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import AsyncIterator

from ipyllm._progress import Tally

__all__ = ["Pace"]


class Pace:
    """Calls in flight (additive increase, multiplicative decrease) and the batch-wide rate-limit pause."""

    def __init__(self, concurrency: int, tally: Tally) -> None:
        self.ceiling = concurrency
        self.window = float(concurrency)
        self.in_flight = 0
        self.resume_at = 0.0
        self.paused_at = -math.inf  # when the latest pause began
        self.tally = tally
        tally.concurrency = concurrency
        import asyncio  # imported when a batch runs, so that ``import ipyllm`` stays fast

        self._slots = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def attempt(self, sent: list[float]) -> AsyncIterator[None]:
        """Around every attempt: wait out a rate-limit pause, then for a place among the requests in flight.

        ``sent[0]`` becomes the time the attempt went out, for ``rate_limited``.
        """
        import asyncio

        while (left := self.resume_at - time.monotonic()) > 0:
            # Restarts spread over a tenth of the pause, so workers do not retry in lockstep.
            await asyncio.sleep(left + random.uniform(0, left / 10))
        async with self._slots:
            await self._slots.wait_for(lambda: self.in_flight < max(1, int(self.window)))
            self.in_flight += 1
        sent[0] = time.monotonic()
        try:
            yield
        finally:
            async with self._slots:
                self.in_flight -= 1
                self._slots.notify_all()

    def rate_limited(self, wait: float, sent_at: float) -> None:
        """A 429 to a request sent at ``sent_at``: wait ``wait`` seconds; a new pause unless it is the last one's."""
        now = time.monotonic()
        # Halve once per pause, not once per 429: a 429 during the pause, or to a request sent before it began,
        # is that pause's.
        if now >= self.resume_at and sent_at >= self.paused_at:
            self.window = max(1.0, self.window / 2)
            self.tally.pauses += 1
            self.paused_at = now
        self.resume_at = max(self.resume_at, now + wait)
        self.tally.paused_until = self.resume_at
        self.tally.concurrency = int(self.window)

    def succeeded(self) -> None:
        # One more call in flight per window of successes.
        self.window = min(float(self.ceiling), self.window + 1 / self.window)
        self.tally.concurrency = int(self.window)
