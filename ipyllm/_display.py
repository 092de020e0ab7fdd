"""How replies, footers and notes look: MIME bundles built from plain strings (no IPython import).

The magics publish these bundles to a display that is updated in place; ``Reply`` uses the same
``render`` for its rich repr, so ``answer`` shown later looks as it did when it arrived.
"""

from __future__ import annotations

import html
import json
import math
import time
import uuid
from typing import Any

from ipyllm._usage import UsageRow

__all__ = ["FORMATS", "LiveOutput", "footer", "format_cost", "render"]

FORMATS = ("markdown", "text", "code", "json", "html")
Bundle = dict[str, Any]


def format_cost(cost: float | None) -> str:
    """``$0.000053``: two significant digits below a cent, cents above; unknown prices say so."""
    if cost is None or (isinstance(cost, float) and math.isnan(cost)):
        return "cost unknown"
    if cost == 0:
        return "$0"
    digits = max(2, 1 - math.floor(math.log10(abs(cost))))
    return f"${cost:.{digits}f}"


def footer(row: UsageRow, cut: str | None = None) -> str:
    """``gpt-4o-mini · 12→85 tokens · $0.000053 · 1.4 s · 1 attempt``.

    Counts made locally because the provider reported none are marked, with the cost priced from them:
    ``~26→10 tokens · ~$0.000012``. Images sent with the call follow the tokens (``12→85 tokens · 2 images``).
    A reply a budget's output cap cut short ends with ``cut`` (``cut at 2,583 tokens by budget_usd``).
    """
    mark = "~" if row.tokens_estimated else ""
    parts = [row.model]
    if row.prompt_tokens is not None:
        tokens = f"{row.prompt_tokens}→{row.completion_tokens or 0} tokens" if row.kind == "chat" else f"{row.prompt_tokens} tokens"
        parts.append(mark + tokens)
    if isinstance(row.images, int) and row.images > 0:
        parts.append(f"{row.images} image{'s' if row.images != 1 else ''}")
    cost = format_cost(row.cost_usd)
    parts.append(mark + cost if cost.startswith("$") else cost)
    parts.append(f"{row.latency_s:.1f} s")
    parts.append(f"{row.attempts} attempt{'s' if row.attempts != 1 else ''}")
    if row.status not in ("ok",):
        parts.append(row.status)
    if cut:
        parts.append(cut)
    return " · ".join(parts)


def _small(text: str) -> str:
    return f'<div style="color: #777; font-size: 0.85em; margin-top: 0.4em">{html.escape(text)}</div>'


def render(text: str, fmt: str = "markdown", note: str | None = None) -> Bundle:
    """A MIME bundle showing ``text`` as ``fmt``, with ``note`` (the footer) in small type under it."""
    plain = text if note is None else f"{text}\n\n{note}"
    bundle: Bundle = {"text/plain": plain}
    tail_md = "" if note is None else f"\n\n<sub>{html.escape(note)}</sub>"
    if fmt == "markdown":
        bundle["text/markdown"] = text + tail_md
    elif fmt == "code":
        fence = "````" if "```" in text else "```"
        bundle["text/markdown"] = f"{fence}\n{text}\n{fence}{tail_md}"
    elif fmt == "json":
        try:
            pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pretty, tail_md = text, tail_md + ("\n\n<sub>(not valid JSON)</sub>" if note is not None else "")
        bundle["text/markdown"] = f"```json\n{pretty}\n```{tail_md}"
    elif fmt == "html":
        bundle["text/html"] = text + ("" if note is None else _small(note))
    # "text": text/plain alone.
    return bundle


def note_bundle(text: str) -> Bundle:
    """A passing note (e.g. a retry wait), shown in the reply's place until the reply arrives."""
    return {"text/plain": f"⏳ {text}", "text/html": f'<div style="color: #a60">⏳ {html.escape(text)}</div>'}


class LiveOutput:
    """One output area, updated in place through the shell's display publisher.

    Nothing is published until there is something to show, so a call that shows nothing (a line magic,
    a request refused at once) leaves no output at all. Streaming pieces arrive far faster than a browser
    wants to redraw, so updates are throttled to ``interval`` seconds; ``show(..., final=True)`` always
    goes out.

    A display cannot be taken back out of a notebook: an update to an empty bundle still leaves an (empty)
    output in the saved file, and only clearing the cell's whole output removes it. So ``withdraw`` clears
    the cell when the caller says this display is all the cell shows (``can_clear``), and otherwise turns
    the display into a short trace line rather than leaving it empty.
    """

    def __init__(self, publisher: Any, interval: float = 0.1, *, can_clear: bool = False) -> None:
        self._publisher = publisher
        self.display_id = uuid.uuid4().hex
        self.interval = interval
        self.can_clear = can_clear
        self.shown = False
        self._last = 0.0

    def show(self, bundle: Bundle, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and self.shown and now - self._last < self.interval:
            return
        # Marked shown before it goes out: a Ctrl-C landing inside publish() must still find it to withdraw.
        update, self.shown = self.shown, True
        self._publisher.publish(data=bundle, metadata={}, transient={"display_id": self.display_id}, update=update)
        self._last = now

    def withdraw(self, trace: str) -> None:
        """Take back what was shown (a passing note): clear the cell if allowed, else leave ``trace`` in its place."""
        if not self.shown:
            return
        if self.can_clear and hasattr(self._publisher, "clear_output"):
            self._publisher.clear_output(wait=False)
            # A later show() starts a new display: the old one is gone from the cell.
            self.display_id, self.shown = uuid.uuid4().hex, False
            return
        self.show({"text/plain": trace, "text/html": _small(trace)}, final=True)
