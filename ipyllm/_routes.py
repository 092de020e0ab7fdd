"""A map's dry run: what its rows would cost three ways, with the tokens each assumes and how long each takes.

- **live** at list price: every prompt token at the input price;
- **live with cache hits**: the shared prefix read from the provider's prompt cache after the first row
  (``_promptcache.estimate_cache_hits``: written once, read by the others, where the model caches and it pays);
- **batch**: the provider's Batch API at its batch price (``_cost.batch_price``), within its window.

Each is a range: the prompts alone, up to every row's output at its cap (``max_tokens``, else the model's maximum
output). A session with a budget is told which routes fit what the tightest budget leaves (their upper bounds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ipyllm._budget import usd
from ipyllm._store import Headroom

__all__ = ["ASSUMED_LATENCY_S", "BATCH_WINDOW", "BatchEstimate", "Route", "live_wall_time"]

#: The completion window every provider batch is sent with (hours): results come within it, often much sooner.
BATCH_WINDOW = 24
#: A live call's wall time, assumed when this session has no answered call of the model to go by.
ASSUMED_LATENCY_S = 2.0


@dataclass(frozen=True)
class Route:
    """One way to send a map's rows: its cost from ``low_usd`` (the prompts alone) to ``high_usd`` (every row's output
    at its cap), what its tokens assume, and its expected wall time."""

    key: str
    name: str
    low_usd: float
    high_usd: float
    tokens: str
    wall: str

    def line(self, width: int) -> str:
        cost = "price unknown" if math.isnan(self.high_usd) else f"{usd(self.low_usd)} to {usd(self.high_usd)}"
        return f"  {self.name + ':':<{width}} {cost} · {self.tokens} · {self.wall}"


@dataclass(frozen=True)
class BatchEstimate:
    """``map(..., dry_run=True)``: what the rows may cost, nothing sent.

    ``low_usd`` / ``high_usd`` are the live route at list price (the prompts alone; with ``output_tokens_per_row``
    output tokens a row); ``routes`` gives all three (``route("batch")``), and ``room`` what the tightest budget
    leaves (None without a budget), with ``fits`` the routes whose upper bound it can pay.
    """

    model: str
    rows: int
    prompt_tokens: int
    low_usd: float
    high_usd: float
    output_tokens_per_row: int
    routes: tuple[Route, ...] = ()
    room: Headroom | None = None

    def route(self, key: str) -> Route:
        """The route ``live``, ``cached`` or ``batch``."""
        for route in self.routes:
            if route.key == key:
                return route
        raise KeyError(f"no route {key!r}: {', '.join(r.key for r in self.routes)}")

    @property
    def fits(self) -> list[str]:
        """The routes (keys) whose upper bound the budget's headroom pays (every route without a budget)."""
        left = math.inf if self.room is None else self.room.left
        return [route.key for route in self.routes if not math.isnan(route.high_usd) and route.high_usd <= left]

    def _budget_line(self) -> str:
        if self.room is None:
            return ""
        left = f"{usd(max(self.room.left, 0.0))} left of {self.room.limit.setting} {usd(self.room.limit.limit, limit=True)}"
        fits = self.fits
        if not fits:
            cheapest = min((r for r in self.routes if not math.isnan(r.low_usd)), key=lambda r: r.low_usd, default=None)
            hint = (
                f"; cap the output with max_tokens, or send fewer rows ({cheapest.name} needs {usd(cheapest.high_usd)})" if cheapest else ""
            )
            return f"\n  budget: {left}: no route fits its worst case{hint}"
        if len(fits) == len(self.routes):
            return f"\n  budget: {left}: every route fits"
        names = [route.name for route in self.routes if route.key in fits]
        return f"\n  budget: {left}: fits {' and '.join(names)}"

    def __str__(self) -> str:
        head = (
            f"dry run, nothing sent · {self.rows:,} rows · {self.model} · {self.prompt_tokens:,} prompt tokens · "
            f"estimated {usd(self.low_usd)} (prompts alone) to {usd(self.high_usd)} "
            f"(with {self.output_tokens_per_row:,} output tokens a row)"
        )
        if not self.routes:
            return head
        width = max(len(route.name) for route in self.routes) + 1
        return head + "".join("\n" + route.line(width) for route in self.routes) + self._budget_line()

    __repr__ = __str__


def live_wall_time(rows: int, concurrency: int, latencies: Sequence[float], first_alone: bool = False) -> str:
    """``about 12 s (40 rows at concurrency 8, 2.0 s a call: this session's median)``."""
    latency = statistics.median(latencies) if latencies else ASSUMED_LATENCY_S
    source = f"the median of this session's {len(latencies):,} calls" if latencies else "assumed"
    waves = math.ceil(max(rows - (1 if first_alone else 0), 0) / max(concurrency, 1)) + (1 if first_alone else 0)
    seconds = waves * latency
    said = f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.0f} min"
    alone = ", the first row alone" if first_alone else ""
    return f"about {said} ({rows:,} rows at concurrency {concurrency}{alone}, {latency:.1f} s a call: {source})"
