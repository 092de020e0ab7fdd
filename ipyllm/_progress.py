"""How a batch shows its progress: an ipywidgets bar in Jupyter, a text bar in a terminal, or nothing.

The batch keeps plain counters (``Tally``); a display reads them at most ten times a second and, at the
end, gives its place to a one-line summary: in Jupyter the bar's output is replaced by the summary's text,
so a saved notebook keeps the line and no widget.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipyllm._budget import usd

__all__ = ["Tally", "progress_display"]

#: Seconds between two redraws (at most ten a second).
INTERVAL = 0.1


@dataclass
class Tally:
    """A batch's counters, written by its workers and read by the display."""

    total: int
    started: float = field(default_factory=time.monotonic)
    answered: int = 0
    cached: int = 0
    failed: int = 0
    #: Rows not sent because a template field's value is missing (not failures).
    missing: int = 0
    not_sent: int = 0
    interrupted: int = 0
    retries: int = 0
    #: Replies a budget's output cap cut short.
    cut: int = 0
    pauses: int = 0
    paused_until: float = 0.0
    spent: float = 0.0
    #: Rows bought below list price or above it: read from or written to the provider's prompt cache, or bought
    #: through its Batch API (the summary then says what the batch saved).
    discounted: int = 0
    budget: float | None = None
    concurrency: int = 0
    #: A provider batch's status while it runs there (``validating``, ``in_progress``, ``finalizing``, ...).
    stage: str = ""

    @property
    def done(self) -> int:
        """Rows finished, whichever way (answered, cached, failed, skipped for a missing value)."""
        return self.answered + self.cached + self.failed + self.missing

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Rows a second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self) -> float | None:
        left = self.total - self.done - self.not_sent - self.interrupted
        return left / self.rate if self.rate > 0 and left >= 0 else None

    def line(self) -> str:
        """``412/1,000 · 3 failed · paused 2.1 s · $0.0123 of $0.50 · 41.2 rows/s · ETA 0:14``; for a provider batch,
        ``batch in_progress · 12/30 done · 1 failed · 0:42 elapsed``."""
        if self.stage:
            failed = [f"{self.failed:,} failed"] if self.failed else []
            return " · ".join([f"batch {self.stage}", f"{self.done:,}/{self.total:,} done", *failed, f"{_clock(self.elapsed)} elapsed"])
        parts = [f"{self.done:,}/{self.total:,}"]
        if self.cached:
            parts.append(f"{self.cached:,} cached")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        if self.missing:
            parts.append(f"{self.missing:,} skipped (missing values)")
        paused = self.paused_until - time.monotonic()
        if paused > 0:
            parts.append(f"rate limited: paused {paused:.1f} s (concurrency {self.concurrency})")
        elif self.pauses:
            parts.append(f"{self.pauses} rate-limit pause{'s' if self.pauses != 1 else ''}")
        parts.append(usd(self.spent) + (f" of {usd(self.budget, limit=True)}" if self.budget is not None else ""))
        parts.append(f"{self.rate:.1f} rows/s")
        if (eta := self.eta()) is not None and self.done < self.total:
            parts.append(f"ETA {_clock(eta)}")
        return " · ".join(parts)


def _clock(seconds: float) -> str:
    if math.isinf(seconds) or math.isnan(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display(Protocol):
    def update(self, tally: Tally) -> None: ...

    def close(self, summary: str) -> None: ...


class _Nothing:
    def update(self, tally: Tally) -> None:
        pass

    def close(self, summary: str) -> None:
        pass


class _Widget:
    """An ``IntProgress`` and a label; at the end, the summary's text takes the output's place."""

    def __init__(self, tally: Tally) -> None:
        import ipywidgets
        from IPython.display import display

        self.bar = ipywidgets.IntProgress(value=0, min=0, max=max(tally.total, 1), description="ipyllm.map")
        self.label = ipywidgets.HTML(value=tally.line())
        self.box = ipywidgets.HBox([self.bar, self.label])
        self.handle = display(self.box, display_id=True)

    def update(self, tally: Tally) -> None:
        self.bar.value = min(tally.done, self.bar.max)
        self.bar.bar_style = "warning" if tally.paused_until > time.monotonic() else ""
        self.label.value = tally.line()

    def close(self, summary: str) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": summary}, raw=True)
        self.box.close()
        self.bar.close()
        self.label.close()


class _Text:
    """A text bar on stderr in tqdm's conventions (tqdm itself when it is installed)."""

    def __init__(self, tally: Tally) -> None:
        self.shown = 0
        self.tqdm: Any = None
        try:
            from tqdm import tqdm
        except ImportError:
            self._last = ""
        else:
            self.tqdm = tqdm(total=tally.total, desc="ipyllm.map", unit="row", file=sys.stderr, leave=False, mininterval=INTERVAL)

    def update(self, tally: Tally) -> None:
        if self.tqdm is not None:
            self.tqdm.update(tally.done - self.shown)
            self.shown = tally.done
            extra = [f"{tally.failed} failed"] if tally.failed else []
            if tally.missing:
                extra.append(f"{tally.missing} skipped")
            if tally.paused_until > time.monotonic():
                extra.append("rate limited")
            extra.append(usd(tally.spent))
            self.tqdm.set_postfix_str(", ".join(extra), refresh=False)
            return
        share = tally.done / tally.total if tally.total else 1.0
        filled = int(share * 20)
        line = f"\ripyllm.map: {share:4.0%}|{'█' * filled}{' ' * (20 - filled)}| {tally.line()}"
        if line != self._last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self._last = line

    def close(self, summary: str) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        else:
            sys.stderr.write("\r\033[K")
        print(summary, file=sys.stderr, flush=True)


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where widgets can show."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_display(enabled: bool, tally: Tally) -> Display:
    """A widget in Jupyter, a text bar elsewhere, nothing when ``enabled`` is False."""
    if not enabled:
        return _Nothing()
    if in_kernel():
        try:
            return _Widget(tally)
        except ImportError:
            pass
    return _Text(tally)
