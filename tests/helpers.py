"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
from typing import Any

import ipyllm


def run_threads(count: int, prompt: str, timeout: float = 120, **overrides: Any) -> list[BaseException | None]:
    """``count`` threads, each making one ``ipyllm.complete(f"{prompt} (thread N)", **overrides)`` at once; what
    each raised (None when it was answered)."""
    outcomes: list[BaseException | None] = [None] * count

    def call(index: int) -> None:
        try:
            ipyllm.complete(f"{prompt} (thread {index})", **overrides)
        except BaseException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return outcomes
