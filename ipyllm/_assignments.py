"""``%llm_config setting=value ...``: the assignments read into values for ``config.update``; the settings listed.

Pure logic for the magics; bad input is a ``UsageError`` in one line.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from IPython.core.error import UsageError

from ipyllm._config import SETTING_NAMES, config, unknown_setting
from ipyllm._locations import LOCATIONS, default_usage_db

__all__ = ["parse_assignments", "settings_text", "split_assignments"]


_NONE_WORDS = {"none", "null", "unset", ""}


_ASSIGNMENT = re.compile(r"\s*(?P<name>[^\s=]+)=")


_CLOSING = {"{": "}", "[": "]"}


def split_assignments(line: str) -> list[tuple[str, str]]:
    """``model=gpt-4o system="Be brief." prices={"m": "gpt-4o"}`` -> name/value pairs, quotes removed.

    A value is a quoted string, a bracketed literal (kept whole, spaces and quotes included), or a word.
    """
    pairs = []
    position = 0
    while position < len(line.rstrip()):
        match = _ASSIGNMENT.match(line, position)
        if match is None:
            word = line[position:].split()[0]
            raise UsageError(f"expected setting=value, got {word!r}: e.g. %llm_config model=gpt-4o temperature=0.2")
        start = match.end()
        opener = line[start : start + 1]
        if opener in ("'", '"'):
            end = line.find(opener, start + 1)
            if end < 0:
                raise UsageError(f"the value of {match['name']} has no closing {opener}")
            value, position = line[start + 1 : end], end + 1
        elif opener in _CLOSING:
            depth, end = 0, start
            while end < len(line):
                depth += {opener: 1, _CLOSING[opener]: -1}.get(line[end], 0)
                end += 1
                if depth == 0:
                    break
            value, position = line[start:end], end
        else:
            end = start
            while end < len(line) and not line[end].isspace():
                end += 1
            value, position = line[start:end], end
        pairs.append((match["name"], value))
    return pairs


def parse_assignments(line: str) -> dict[str, Any]:
    """``model=gpt-4o temperature=0.2 max_tokens=none`` -> values for ``config.update``."""
    values: dict[str, Any] = {}
    for name, value in split_assignments(line):
        if name not in SETTING_NAMES:
            raise UsageError(str(unknown_setting(name)))
        trait = config.traits()[name]
        if name == "prices":
            try:
                values[name] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise UsageError('prices must be a Python dict, e.g. prices={"my-model": "gpt-4o-mini"}') from None
        elif trait.allow_none and value.strip().lower() in _NONE_WORDS:
            values[name] = None
        else:
            values[name] = value
    return values


def settings_text() -> str:
    """The settings, one per line, the key masked."""
    width = max(map(len, SETTING_NAMES))
    lines = []
    for name, value in config.settings().items():
        if isinstance(value, LOCATIONS):
            value = str(value)  # the file's path, :memory:, a server's URL with its password masked
        elif name == "usage_db" and value is None:
            value = f"unset: {default_usage_db()}"  # where the rows go meanwhile
        shown = "unset" if value is None else repr(value) if not isinstance(value, str) or name == "api_key" else value
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)
