"""The ledger's views: today's spend, figures grouped by model, day, notebook, ..., and the latest calls, each one
``GROUP BY`` (or indexed) query that reads only the window asked for, in SQLite or PostgreSQL.

A team ledger grows by every call of every member, so nothing here reads the whole ledger into Python: the
database sums, and Python only names the groups. Days and hours are the local time zone's: the database groups
by quarter hour in UTC (every time zone's offset is a whole number of quarter hours), and the quarters are folded
into local days and hours here, so both databases agree whatever their own time zone. A session's rows in memory
(``MemoryLedger``) are read through the same SQL, in an in-memory SQLite database (``memory_reader``).

Everything returned is JSON-ready (str, int, float, None; times as ISO 8601 with their offset), for
``%llm_usage``, the picker, and the Jupyter Server extension. No litellm, no IPython, no pandas here.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from ipyllm._sqlschema import INSERT_ROW, migrate
from ipyllm._usage import COLUMNS, UsageRow, micros, row_values, utc_now
from ipyllm.errors import InvalidInputError

__all__ = [
    "BY",
    "MEASURES",
    "Reader",
    "Window",
    "aggregate",
    "fold",
    "grouped",
    "latest",
    "memory_reader",
    "summary",
]

#: What ``grouped`` groups by.
BY = ("model", "day", "hour", "notebook", "user", "session", "cell", "batch", "host")
_QUARTER_US = 900_000_000
#: The figures summed per group: (name, SQL). The last four price a group's saving against list price per model
#: (``_savings``): the rows it is known for, and their prompt and completion tokens and cost (cached rows: 0).
MEASURES: tuple[tuple[str, str], ...] = (
    ("calls", "COUNT(*)"),
    ("input_tokens", "SUM(prompt_tokens)"),
    ("output_tokens", "SUM(completion_tokens)"),
    ("cost_usd", "SUM(cost_usd)"),
    ("errors", "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END)"),
    ("refused", "SUM(CASE WHEN status = 'over_budget' THEN 1 ELSE 0 END)"),
    ("retries", "SUM(CASE WHEN attempts > 1 THEN attempts - 1 ELSE 0 END)"),
    ("latency_sum", "SUM(latency_s)"),
    ("latency_n", "COUNT(latency_s)"),
    ("saved_rows", "SUM(CASE WHEN status = 'cached' OR (prompt_tokens IS NOT NULL AND cost_usd IS NOT NULL) THEN 1 ELSE 0 END)"),
    ("saved_prompt", "SUM(CASE WHEN status = 'cached' THEN 0 WHEN cost_usd IS NOT NULL THEN prompt_tokens ELSE 0 END)"),
    (
        "saved_completion",
        "SUM(CASE WHEN status = 'cached' THEN 0 WHEN cost_usd IS NOT NULL AND prompt_tokens IS NOT NULL"
        " THEN COALESCE(completion_tokens, 0) ELSE 0 END)",
    ),
    ("saved_cost", "SUM(CASE WHEN status = 'cached' THEN 0 WHEN prompt_tokens IS NOT NULL THEN cost_usd ELSE 0 END)"),
)
_NAMES = [name for name, _ in MEASURES]
#: Columns a ``where`` filter may name (every column of the usage frame but its time: ``since`` / ``until``).
FILTERABLE = tuple(name for name in COLUMNS if name != "timestamp")


class Reader(Protocol):
    """What the views need of a store: its SQL dialect and one read-only query."""

    dialect: str

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


def _quoted(column: str) -> str:
    return '"user"' if column == "user" else column  # a reserved word in PostgreSQL


@dataclass(frozen=True)
class Window:
    """Which rows a view reads: a time window (``until`` excluded), one user, one session or all but one, and
    equality / membership filters on columns (``{"model": "gpt-4o", "status": ["ok", "cached"]}``)."""

    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    session: str | None = None
    exclude_session: str | None = None
    where: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.where if name not in FILTERABLE]
        if unknown:
            raise InvalidInputError(
                f"where: no column {unknown[0]!r} to filter on; use one of {', '.join(FILTERABLE)} (and since=/until= for the time)"
            )

    def sql(self) -> tuple[str, list[Any]]:
        """The ``WHERE`` clause (with ``?`` placeholders) and its parameters."""
        terms: list[str] = []
        parameters: list[Any] = []
        if self.since is not None:
            terms.append("timestamp_us >= ?")
            parameters.append(micros(self.since))
        if self.until is not None:
            terms.append("timestamp_us < ?")
            parameters.append(micros(self.until))
        if self.session is not None:
            terms.append("session = ?")
            parameters.append(self.session)
        if self.exclude_session is not None:
            terms.append("(session IS NULL OR session <> ?)")
            parameters.append(self.exclude_session)
        filters = dict(self.where)
        if self.user is not None:
            filters.setdefault("user", self.user)
        for name, wanted in filters.items():
            column = _quoted(name)
            values = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
            present = [_stored(name, v) for v in values if v is not None]
            either = [f"{column} IN ({', '.join('?' * len(present))})"] if present else []
            if len(present) < len(values):
                either.append(f"{column} IS NULL")
            terms.append(f"({' OR '.join(either)})" if either else "1 = 0")
            parameters.extend(present)
        return (f" WHERE {' AND '.join(terms)}" if terms else ""), parameters


def _stored(name: str, value: Any) -> Any:
    """A filter's value as the ledger stores it (a flag as 0/1 in SQLite is compared as a bool in PostgreSQL)."""
    if COLUMNS[name] == "boolean":
        return bool(value)
    return value


def _run(reader: Reader, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
    if reader.dialect == "postgresql":
        sql = sql.replace("?", "%s")
    return reader.read(sql, parameters)


def _keys(by: str) -> list[str]:
    if by in ("day", "hour"):
        return [f"timestamp_us / {_QUARTER_US}"]
    if by == "cell":
        return ["session", "cell"]
    if by not in BY:
        raise InvalidInputError(f"by: cannot group by {by!r}; use one of {', '.join(BY)}")
    return [_quoted(by)]


def aggregate(reader: Reader, by: str, window: Window, per_model: bool = False) -> list[tuple[Any, ...]]:
    """One ``GROUP BY`` query: per group (and per model, with ``per_model``), its key columns then ``MEASURES``.

    Keys as stored: a quarter hour's number (UTC) for ``day`` and ``hour``, ``(session, cell)`` for ``cell``.
    """
    keys = _keys(by) + (["model"] if per_model and by != "model" else [])
    where, parameters = window.sql()
    measures = ", ".join(sql for _, sql in MEASURES)
    positions = ", ".join(str(n) for n in range(1, len(keys) + 1))
    return _run(reader, f"SELECT {', '.join(keys)}, {measures} FROM usage{where} GROUP BY {positions}", parameters)


def _local_key(by: str, quarter: int, zone: Any) -> str:
    moment = datetime.fromtimestamp(quarter * _QUARTER_US / 1e6, timezone.utc).astimezone(zone)
    if by == "day":
        return moment.date().isoformat()
    return moment.replace(minute=0, second=0, microsecond=0).isoformat()


def _add(left: Any, right: Any) -> Any:
    return right if left is None else left if right is None else left + right


def fold(
    rows: Iterable[tuple[Any, ...]], by: str, per_model: bool = False, several_sessions: bool = True, zone: Any = None
) -> dict[Any, list[Any]]:
    """``aggregate``'s rows (of one query or several: the ledger's and memory's) merged by their key as shown: a local
    day (``2026-12-04``) or hour (``2026-12-04T10:00:00+01:00``), ``session In[cell]`` (the cell alone when there is one
    session), else the value. With ``per_model``, keyed ``(key, model)``. Values are ``MEASURES`` in order."""
    zone = zone or datetime.now().astimezone().tzinfo
    width = 2 if by == "cell" else 1
    merged: dict[Any, list[Any]] = {}
    for row in rows:
        stored, rest = row[:width], row[width:]
        if per_model and by != "model":
            model, values = rest[0], rest[1:]
        else:
            model, values = (stored[0] if by == "model" else None), rest
        if by in ("day", "hour"):
            key: Any = _local_key(by, int(stored[0]), zone)
        elif by == "cell":
            session, cell = stored
            key = (None if session is None else f"{session} In[{'-' if cell is None else cell}]") if several_sessions else cell
        else:
            key = stored[0]
        slot = (key, model) if per_model else key
        known = merged.get(slot)
        merged[slot] = list(values) if known is None else [_add(a, b) for a, b in zip(known, values, strict=True)]
    return merged


def _number(value: Any) -> Any:
    """A database's number as JSON's: a Decimal (PostgreSQL's sum of big integers) as int or float, NaN as None."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    number = float(value)
    return int(number) if number.is_integer() else number


def _sort_key(key: Any) -> tuple[int, Any]:
    return (1, "") if key is None else (0, key)


def grouped(
    store: Reader,
    by: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    session: str | None = None,
) -> list[dict[str, Any]]:
    """Calls, tokens, cost (USD, None where no price is known), errors and mean latency per ``by`` (model, day, hour,
    notebook, user, session, cell, batch, host; days and hours in the local time zone), in ``[since, until)``, of one
    user or session; sorted by key, a missing key (None) last."""
    window = Window(since=since, until=until, user=user, session=session)
    merged = fold(aggregate(store, by, window), by, several_sessions=session is None)
    index = {name: n for n, name in enumerate(_NAMES)}
    result = []
    for key in sorted(merged, key=_sort_key):
        values = [_number(v) for v in merged[key]]
        count = values[index["latency_n"]] or 0
        result.append(
            {
                "key": key,
                "calls": values[index["calls"]] or 0,
                "input_tokens": values[index["input_tokens"]] or 0,
                "output_tokens": values[index["output_tokens"]] or 0,
                "cost_usd": values[index["cost_usd"]],
                "errors": values[index["errors"]] or 0,
                "mean_latency_s": (values[index["latency_sum"]] / count) if count else None,
            }
        )
    return result


_LATEST = ("timestamp_us", "model", "kind", "status", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "attempts")
_LATEST_AFTER = ("notebook", "user", "session", "error")


def _iso(stamp_us: int) -> str:
    return datetime.fromtimestamp(stamp_us / 1e6, timezone.utc).isoformat()


def latest(store: Reader, *, limit: int = 50, user: str | None = None, prompts: bool = False) -> list[dict[str, Any]]:
    """The latest ``limit`` calls (of ``user``), newest first; their prompts (``source``) only with ``prompts``."""
    columns = [*_LATEST, *_LATEST_AFTER, *(["source"] if prompts else [])]
    where, parameters = Window(user=user).sql()
    rows = _run(
        store,
        f"SELECT {', '.join(map(_quoted, columns))} FROM usage{where} ORDER BY timestamp_us DESC, id DESC LIMIT ?",
        [*parameters, max(0, int(limit))],
    )
    calls = []
    for row in rows:
        call = {("timestamp" if name == "timestamp_us" else name): _number(value) if name != "timestamp_us" else _iso(value)
                for name, value in zip(columns, row, strict=True)}  # fmt: skip
        calls.append(call)
    return calls


#: Where each budget setting applies: on a team ledger the daily budget is the team's; on a file, everyone's on it.
_SCOPES = {"daily_budget_usd": "everyone", "user_daily_budget_usd": "user", "budget_usd": "session"}


def summary(store: Reader, *, user: str | None, budgets: Mapping[str, float | None], now: datetime | None = None) -> dict[str, Any]:
    """Today's spend (since local midnight) of ``user`` and, on a team ledger, of everyone; the budgets in force and
    what each leaves; the level (``ok``, ``warn`` at 80 % of a daily budget, ``over`` once one is spent or has
    refused a call today); the last row's time, and a version that changes whenever a row is added."""
    now = now or utc_now()
    day_start = now.astimezone().replace(hour=0, minute=0, second=0, microsecond=0)  # the local midnight
    mine = "1" if user is None else 'CASE WHEN "user" = ? THEN 1 ELSE 0 END'
    rows = _run(
        store,
        f"SELECT {mine}, COUNT(*), SUM(cost_usd), SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN status = 'over_budget' THEN 1 ELSE 0 END) FROM usage WHERE timestamp_us >= ? GROUP BY 1",
        [*([] if user is None else [user]), micros(day_start)],
    )
    figures = {int(row[0]): [_number(v) or 0 for v in row[1:]] for row in rows}
    everyone = [sum(v[n] for v in figures.values()) for n in range(4)]

    def today(values: list[Any]) -> dict[str, Any]:
        return {"cost_usd": float(values[1]), "calls": int(values[0]), "errors": int(values[2]), "refused": int(values[3])}

    shared = bool(getattr(store, "shared", False))
    own = today(figures.get(1, [0, 0, 0, 0]))
    team = today(everyone)
    shown: list[dict[str, Any]] = []
    level = "ok"
    for name, limit in budgets.items():
        if limit is None:
            continue
        scope = _SCOPES.get(name)
        if scope is None:
            raise InvalidInputError(f"budgets: no budget setting {name!r}; use {', '.join(_SCOPES)}")
        spent = {"everyone": team["cost_usd"], "user": own["cost_usd"], "session": None}[scope]
        refused = {"everyone": team["refused"], "user": own["refused"], "session": 0}[scope]
        shown.append(
            {
                "name": name,
                "scope": "team" if scope == "everyone" and shared else scope,
                "limit_usd": float(limit),
                "spent_usd": spent,
                "left_usd": None if spent is None else float(limit) - spent,
            }
        )
        if refused or (spent is not None and spent >= limit):
            level = "over"
        elif spent is not None and round(spent, 9) >= round(0.8 * limit, 9) and level == "ok":  # 0.8 * 0.05 is 0.04000000000000001
            level = "warn"
    # Two subqueries, each one index lookup: MAX(id), MAX(timestamp_us) in one SELECT scans the whole table in SQLite.
    last_id, last_us = _run(store, "SELECT (SELECT MAX(id) FROM usage), (SELECT MAX(timestamp_us) FROM usage)", [])[0]
    return {
        "user": user,
        "team": shared,
        "ledger": store.dialect if store.dialect in ("sqlite", "postgresql") else "memory",
        "day_start": day_start.isoformat(),
        "today": own,
        "team_today": team if shared else None,
        "budgets": shown,
        "level": level,
        "last_row": None if last_us is None else _iso(int(last_us)),
        "version": f"{last_id or 0}-{last_us or 0}",
    }


class _MemoryReader:
    """Rows in memory read through the ledger's own SQL: an in-memory SQLite database holding them."""

    dialect = "sqlite"
    shared = False

    def __init__(self, rows: Sequence[UsageRow]) -> None:
        self.connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(self.connection)
        self.connection.executemany(INSERT_ROW, [[str(n), *row_values(row)] for n, row in enumerate(rows)])

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, parameters).fetchall()


def memory_reader(rows: Sequence[UsageRow]) -> Reader:
    """A ``Reader`` over rows in memory (a session's), for the same views as the ledger's."""
    return _MemoryReader(rows)
