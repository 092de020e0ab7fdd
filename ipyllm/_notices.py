"""Notices: what ipyllm tells the user on the side (a ledger that cannot be written, a reply cut short, a batch's
rows not sent), one line each, through ``logging`` (logger ``ipyllm``).

The logger's own handler writes ``ipyllm: <message>`` to ``sys.stderr`` as it is at that moment, which in Jupyter
is the running cell's, so a notice shows under the cell that caused it, once. The logger does not propagate:
a root handler (``logging.basicConfig``) would print each notice a second time. To silence the notices,
``logging.getLogger("ipyllm").setLevel(logging.ERROR)``; to collect them, add a handler of your own.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["logger", "notice", "said"]

logger = logging.getLogger("ipyllm")


class _CellHandler(logging.Handler):
    """Writes each record as one ``ipyllm: ...`` line to the current ``sys.stderr``, and counts them."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        _CellHandler.count += 1
        try:
            stream = sys.stderr
            stream.write(f"ipyllm: {record.getMessage()}\n")
            stream.flush()
        except Exception:
            self.handleError(record)


if not any(isinstance(handler, _CellHandler) for handler in logger.handlers):
    logger.addHandler(_CellHandler())
logger.setLevel(logging.INFO)
logger.propagate = False


def notice(message: str) -> None:
    """Tell the user one thing, in one line: what happened and what to do."""
    logger.warning(message)


def said() -> int:
    """How many notices have been shown so far (a cell that shows one must not be cleared)."""
    return _CellHandler.count
