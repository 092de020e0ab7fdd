"""The ``--chat`` conversation of this session: its turns, how a re-run cell replaces its own, and how it is shown.

A cell is known by its id when the frontend sends one (JupyterLab, Notebook 7, VS Code with cell ids),
otherwise by its source (nbclient, papermill, terminal IPython): re-running the same source replaces that
cell's turns instead of appending duplicates. The conversation lives in this module, so it outlasts
``%reload_ext ipyllm``; ``chat_reset()`` (``%llm_chat --reset``) starts a new one.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ipyllm._attach import text_of
from ipyllm._display import footer
from ipyllm._usage import UsageRow

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Conversation", "Turn", "cell_key", "chat_history", "chat_reset", "conversation"]


def cell_key(cell_id: str | None, source: str | None) -> str | None:
    """What identifies a cell across runs: its id when the frontend sends one, else its source; None: unknown."""
    if cell_id:
        return f"id:{cell_id}"
    if source is not None and source.strip():
        return "source:" + hashlib.sha256(source.strip().encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return None


@dataclass
class Turn:
    """One ``--chat`` exchange, with the usage row of its call."""

    cell_id: str | None
    #: The prompt as sent: its text, or its content parts (images kept, so that later turns send them again).
    prompt: str | list[dict[str, Any]]
    reply: str
    usage: UsageRow | None = None
    #: The cell's identity (``cell_key``) and the run of it that recorded this turn.
    key: str | None = None
    run: int = 0


@dataclass
class Conversation:
    """The ``--chat`` history of this session; a re-run cell replaces its own earlier turns.

    A cell may hold several ``--chat`` calls (a loop of ``%llm --chat`` lines): the turns of one run are
    kept together, and a later run of the same cell replaces all of them.
    """

    turns: list[Turn] = field(default_factory=list)

    def _stale(self, turn: Turn, key: str | None, run: int) -> bool:
        """A turn from an earlier run of this same cell."""
        return key is not None and turn.key == key and turn.run != run

    def history(self, key: str | None = None, run: int = 0) -> list[dict[str, Any]]:
        """The messages to send before a new prompt from cell ``key`` (its earlier runs left out)."""
        messages: list[dict[str, Any]] = []
        for turn in self.turns:
            if not self._stale(turn, key, run):
                messages += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.reply}]
        return messages

    def record(
        self,
        cell_id: str | None,
        prompt: str | list[dict[str, Any]],
        reply: str,
        usage: UsageRow | None = None,
        *,
        key: str | None = None,
        run: int = 0,
    ) -> None:
        """Add a turn; the turns of earlier runs of the same cell go."""
        self.turns = [t for t in self.turns if not self._stale(t, key, run)]
        self.turns.append(Turn(cell_id, prompt, reply, usage, key, run))

    def clear(self) -> int:
        """Forget every turn; returns how many there were."""
        count = len(self.turns)
        self.turns.clear()
        return count

    # -- showing it -------------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """One row per turn: cell (its ``In[N]``), prompt, reply, model, tokens and cost from its usage row."""
        import pandas as pd

        columns = {
            "cell": "Int64",
            "prompt": "string",
            "reply": "string",
            "model": "string",
            "prompt_tokens": "Int64",
            "completion_tokens": "Int64",
            "cost_usd": "float64",
        }
        rows = [
            {
                "cell": t.usage.cell if t.usage else None,
                "prompt": text_of(t.prompt),
                "reply": t.reply,
                "model": t.usage.model if t.usage else None,
                "prompt_tokens": t.usage.prompt_tokens if t.usage else None,
                "completion_tokens": t.usage.completion_tokens if t.usage else None,
                "cost_usd": t.usage.cost_usd if t.usage else float("nan"),
            }
            for t in self.turns
        ]
        frame = pd.DataFrame(rows, columns=list(columns)).astype(columns)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="turn")
        return frame

    def bundle(self) -> dict[str, Any]:
        """The conversation as a transcript (plain text and markdown): each turn, then its call's footer."""
        if not self.turns:
            text = "no --chat turns yet: %%llm --chat (or %llm --chat ...) starts the conversation"
            return {"text/plain": text, "text/markdown": f"*{html.escape(text)}*"}
        plain, markdown = [], []
        for number, turn in enumerate(self.turns, 1):
            heading = f"turn {number}" + (f" · In[{turn.usage.cell}]" if turn.usage and turn.usage.cell is not None else "")
            note = footer(turn.usage) if turn.usage else ""
            prompt = text_of(turn.prompt)  # an image as [image W×H]: never its bytes
            plain += [f"── {heading}", f"you: {prompt}", turn.reply, f"({note})" if note else "", ""]
            quoted = "\n".join(f"> {line}" for line in prompt.splitlines() or [""])
            markdown += [f"**{heading}**", quoted, turn.reply, f"<sub>{html.escape(note)}</sub>", "---"]
        tokens = sum((t.usage.prompt_tokens or 0) + (t.usage.completion_tokens or 0) for t in self.turns if t.usage)
        count = len(self.turns)
        summary = f"{count} turn{'s' if count != 1 else ''}, {tokens:,} tokens in all; %llm_chat --reset starts a new conversation"
        plain.append(summary)
        markdown.append(f"<sub>{html.escape(summary)}</sub>")
        return {"text/plain": "\n".join(plain), "text/markdown": "\n\n".join(markdown)}


#: This session's conversation (kept across ``%reload_ext ipyllm``).
conversation = Conversation()


def chat_history() -> pd.DataFrame:
    """The ``--chat`` conversation, one row per turn: cell, prompt, reply, model, tokens and cost.

    Returns
    -------
    pandas.DataFrame
        Indexed by turn number (from 1); ``cell`` is the ``In[N]`` that made the call.
    """
    return conversation.frame()


def chat_reset() -> int:
    """Start a new ``--chat`` conversation (as ``%llm_chat --reset``); returns how many turns were forgotten.

    The usage rows of the forgotten turns stay in ``ipyllm.usage()``.
    """
    return conversation.clear()
