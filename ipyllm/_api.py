"""The session: the Python API over the configuration, the client and the ledger.

Data flows one way: caller -> ``config.snapshot(**overrides)`` -> ``Client`` (retries) -> reply and
usage row -> ledger -> frame. Every call leaves exactly one row, whatever its outcome.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ipyllm._client import Client, Embeddings, Reply, as_messages
from ipyllm._config import SETTING_NAMES, SettingError, Settings, config
from ipyllm._ledger import Ledger, MemoryLedger, UsageRow, to_frame
from ipyllm._retry import RetryNote

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SESSION_ID", "chat", "complete", "embed", "session", "usage"]

#: This kernel session's id, in every row it writes.
SESSION_ID = uuid.uuid4().hex[:12]

# Arguments ipyllm sets itself: passing them would let litellm or the OpenAI SDK retry beneath our policy.
_RESERVED = {"max_retries": "num_retries", "stream_options": "stream", "messages": "prompt_or_messages"}


class Session:
    """The ledger and client of this process (tests swap them for their own)."""

    def __init__(self, ledger: Ledger | None = None, client: Client | None = None) -> None:
        self.id = SESSION_ID
        self.ledger: Ledger = ledger or MemoryLedger()
        self.client = client or Client()

    def recorder(self, source: str) -> Callable[[UsageRow], None]:
        cell = current_cell()

        def record(row: UsageRow) -> None:
            row.session, row.cell, row.source = self.id, cell, source
            self.ledger.append(row)

        return record


session = Session()


def current_cell() -> int | None:
    """The execution count of the running cell (its ``In[N]``), or None outside IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    # The displayhook numbers Out[N] as In[N]; IPython 9 has already counted the running cell, 8 had not.
    count = getattr(getattr(shell, "displayhook", None), "prompt_count", None)
    return count if isinstance(count, int) and count > 0 else None


def split_overrides(overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """Per-call settings (validated like any setting) and the rest, passed to litellm as is."""
    for name, instead in _RESERVED.items():
        if name in overrides:
            raise SettingError(f"{name} is set by ipyllm: use {instead} instead", name)
    known = {k: v for k, v in overrides.items() if k in SETTING_NAMES}
    extra = {k: v for k, v in overrides.items() if k not in SETTING_NAMES}
    return config.snapshot(**known), extra


def chat(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    *,
    source: str,
    stream: bool = False,
    on_text: Callable[[str], Any] | None = None,
    on_retry: Callable[[RetryNote], Any] | None = None,
    **overrides: Any,
) -> Reply:
    settings, extra = split_overrides(overrides)
    messages = as_messages(prompt_or_messages, settings.system)
    return session.client.chat(
        settings, messages, report=session.recorder(source), stream=stream, on_text=on_text, on_retry=on_retry, extra=extra
    )


def complete(
    prompt_or_messages: str | Sequence[dict[str, Any]],
    *,
    stream: bool = False,
    on_text: Callable[[str], Any] | None = None,
    on_retry: Callable[[RetryNote], Any] | None = None,
    **overrides: Any,
) -> Reply:
    """Send one chat request, retried, and return the reply.

    Parameters
    ----------
    prompt_or_messages
        A prompt (sent as one user message) or a list of OpenAI-style messages.
    stream
        Receive the reply in pieces; ``on_text`` is called with each.
    on_retry
        Called with a ``RetryNote`` before each retry wait.
    **overrides
        Settings for this call only (``model``, ``temperature``, ``max_tokens``, ``system``, ...); other
        keywords (``top_p``, ``response_format``, ...) go to ``litellm.completion`` as they are.

    Returns
    -------
    Reply
        A ``str`` of the reply text, with ``.usage`` (its usage row), ``.messages`` and ``.response``.

    Raises
    ------
    ipyllm.LLMError
        When the call fails after its retries (a subclass says why; ``.usage`` is the row).
    """
    return chat(prompt_or_messages, source="api", stream=stream, on_text=on_text, on_retry=on_retry, **overrides)


def embed(texts: str | Sequence[str], *, on_retry: Callable[[RetryNote], Any] | None = None, **overrides: Any) -> Embeddings:
    """Embed texts with ``embedding_model`` (Azure: ``embedding_deployment`` and ``api_version``).

    ``model=`` is accepted for ``embedding_model=``. Returns one vector per text, with ``.usage``.
    """
    if "model" in overrides:
        overrides["embedding_model"] = overrides.pop("model")
    settings, extra = split_overrides(overrides)
    items = [texts] if isinstance(texts, str) else list(texts)
    return session.client.embed(settings, items, report=session.recorder("api"), on_retry=on_retry, extra=extra)


def usage(all_sessions: bool = False) -> pd.DataFrame:
    """The usage frame: one row per call, in call order (this session only unless ``all_sessions``)."""
    return to_frame(session.ledger.rows(None if all_sessions else session.id))
