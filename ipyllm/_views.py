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
from datetime import date, datetime, timezone
from typing import Any, Protocol

from ipyllm._sqlschema import INSERT_ROW, ROW_COLUMNS
from ipyllm._totals import DAY_US, FIGURES, KEYS, LEVELS, QUARTER_US, contributions
from ipyllm._usage import COLUMNS, UsageRow, micros, row_values, utc_now
from ipyllm.errors import InvalidInputError

__all__ = [
    "BY",
    "FILTERABLE",
    "MEASURES",
    "Reader",
    "Window",
    "aggregate",
    "column_list",
    "fold",
    "grouped",
    "latest",
    "memory_reader",
    "moment",
    "run_query",
    "selected_columns",
    "summary",
]

#: What ``grouped`` groups by.
BY = ("model", "day", "hour", "notebook", "user", "session", "cell", "batch", "host")
#: The figures summed per group (``_totals.FIGURES``), in the order ``aggregate`` returns them.
MEASURES = tuple(name for name, _ in FIGURES)
_NAMES = list(MEASURES)
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

    def matches(self, row: UsageRow) -> bool:
        """Whether a row in memory is in the window (as ``sql`` selects rows in the ledger)."""
        stamp = micros(row.timestamp)
        since, until = self.bounds()
        if (since is not None and stamp < since) or (until is not None and stamp >= until):
            return False
        if (self.session is not None and row.session != self.session) or (
            self.exclude_session is not None and row.session == self.exclude_session
        ):
            return False
        return all(_in(getattr(row, name), values) for name, values in self.filters().items())

    def bounds(self) -> tuple[int | None, int | None]:
        """``since`` and ``until`` in microseconds."""
        return (None if self.since is None else micros(self.since)), (None if self.until is None else micros(self.until))

    def filters(self) -> dict[str, list[Any]]:
        """Each filtered column's values (None: NULL), ``user`` among them."""
        filters = {name: list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v] for name, v in self.where.items()}
        if self.user is not None:
            filters.setdefault("user", [self.user])
        return filters

    def sql(self, since_us: int | None = None, until_us: int | None = None, session: str | None = None) -> tuple[str, list[Any]]:
        """The ``WHERE`` clause on the ledger's rows (``?`` placeholders) and its parameters; ``since_us`` / ``until_us``
        narrow the window, ``session`` reads that session's rows only."""
        since, until = self.bounds()
        since = since if since_us is None else since_us if since is None else max(since, since_us)
        until = until if until_us is None else until_us if until is None else min(until, until_us)
        terms: list[str] = []
        parameters: list[Any] = []
        for term, value in (("timestamp_us >= ?", since), ("timestamp_us < ?", until), ("session = ?", session or self.session)):
            if value is not None:
                terms.append(term)
                parameters.append(value)
        if self.exclude_session is not None and session is None:
            terms.append("(session IS NULL OR session <> ?)")
            parameters.append(self.exclude_session)
        for name, values in self.filters().items():
            column = _quoted(name)
            present = [_stored(name, v) for v in values if v is not None]
            either = [f"{column} IN ({', '.join('?' * len(present))})"] if present else []
            if len(present) < len(values):
                either.append(f"{column} IS NULL")
            terms.append(f"({' OR '.join(either)})" if either else "1 = 0")
            parameters.extend(present)
        return (f" WHERE {' AND '.join(terms)}" if terms else ""), parameters


def moment(value: Any, name: str) -> datetime | None:
    """``since`` / ``until`` as an aware time: a datetime (naive: local time), a date (its local midnight), an ISO 8601
    string, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInputError(
                f"{name}: {value!r} is not a time; give a datetime or an ISO 8601 string such as '2026-12-04T09:00'"
            ) from None
    elif not isinstance(value, datetime) and isinstance(value, date):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name}: give a datetime, a date or an ISO 8601 string, not {type(value).__name__}")
    to_pydatetime = getattr(value, "to_pydatetime", None)  # a pandas Timestamp
    value = to_pydatetime() if to_pydatetime is not None else value
    return value if value.tzinfo is not None else value.astimezone()


def selected_columns(columns: Sequence[str] | None) -> list[str]:
    """The frame's columns to read: those asked for (all by default) and the time, in frame order; an unknown one refused."""
    if columns is None:
        return list(COLUMNS)
    if isinstance(columns, str):
        columns = [columns]
    unknown = [name for name in columns if name not in COLUMNS]
    if unknown:
        raise InvalidInputError(f"columns: the usage frame has no column {unknown[0]!r}; use any of {', '.join(COLUMNS)}")
    return [name for name in COLUMNS if name in columns or name == "timestamp"]


def column_list(names: Sequence[str]) -> str:
    """The ledger's columns for frame columns, in SQL."""
    return ", ".join("timestamp_us" if name == "timestamp" else _quoted(name) for name in names)


def _in(value: Any, wanted: list[Any]) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return any(w is None for w in wanted)
    return value in wanted


def _stored(name: str, value: Any) -> Any:
    """A filter's value as the ledger stores it (a flag as 0/1 in SQLite is compared as a bool in PostgreSQL)."""
    if COLUMNS[name] == "boolean":
        return bool(value)
    return value


def run_query(reader: Reader, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
    """One read-only query (``?`` placeholders) in the reader's dialect."""
    if reader.dialect == "postgresql":
        sql = sql.replace("?", "%s")
    return reader.read(sql, parameters)


def _keys(by: str) -> list[str]:
    if by in ("day", "hour"):
        return [f"timestamp_us / {QUARTER_US}"]
    if by == "cell":
        return ["session", "cell"]
    if by not in BY:
        raise InvalidInputError(f"by: cannot group by {by!r}; use one of {', '.join(BY)}")
    return [_quoted(by)]


_SUMS = ", ".join(f"SUM({share})" for share in contributions())
_TOTAL_SUMS = ", ".join(f"SUM({name})" for name in MEASURES)


def _positions(count: int) -> str:
    return ", ".join(str(n) for n in range(1, count + 1))


def _raw(reader: Reader, keys: list[str], window: Window, **narrowed: Any) -> list[tuple[Any, ...]]:
    where, parameters = window.sql(**narrowed)
    return run_query(reader, f"SELECT {', '.join(keys)}, {_SUMS} FROM usage{where} GROUP BY {_positions(len(keys))}", parameters)


def _total_key(name: str) -> str:
    """A key of the totals as the ledger's column: NULL where its bit in ``nulls`` is set."""
    if name in ("day", "hour"):
        return "bucket"
    return f"CASE WHEN (nulls & {1 << KEYS.index(name)}) = 0 THEN {_quoted(name)} END"


def _from_totals(
    reader: Reader, table: str, by: str, per_model: bool, window: Window, first: int | None, end: int | None
) -> list[tuple[Any, ...]]:
    """The totals of ``table``'s steps ``[first, end)`` (unbounded where None)."""
    keys = [_total_key(by), *([_total_key("model")] if per_model and by != "model" else [])]
    terms: list[str] = []
    parameters: list[Any] = []
    for term, value in (("bucket >= ?", first), ("bucket < ?", end)):
        if value is not None:
            terms.append(term)
            parameters.append(value)
    for name, values in window.filters().items():
        bit = 1 << KEYS.index(name)
        present = [v for v in values if v is not None]
        either = [f"({_quoted(name)} IN ({', '.join('?' * len(present))}) AND (nulls & {bit}) = 0)"] if present else []
        if len(present) < len(values):
            either.append(f"(nulls & {bit}) <> 0")
        terms.append(f"({' OR '.join(either)})" if either else "1 = 0")
        parameters.extend(present)
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    sql = f"SELECT {', '.join(keys)}, {_TOTAL_SUMS} FROM {table}{where} GROUP BY {_positions(len(keys))}"
    return run_query(reader, sql, parameters)


def _negated(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    return [(*row[:width], *(None if v is None else -v for v in row[width:])) for row in rows]


def aggregate(reader: Reader, by: str, window: Window, per_model: bool = False) -> list[tuple[Any, ...]]:
    """Per group (and per model, with ``per_model``): its key columns, then ``MEASURES``; several rows may share a key
    (``fold`` merges them). Keys as stored: a quarter hour's number (UTC) for ``day`` and ``hour``, ``(session, cell)``
    for ``cell``.

    Grouped by model, day, hour, notebook, user or host, and filtered on those only, the whole quarter hours of the
    window are read from the running totals (``_totals``), and only the rest from the ledger's rows: the window's
    partial quarter hours (indexed by time) and the rows of a session left out (indexed by session and time), taken
    away. Otherwise one ``GROUP BY`` over the window's rows.
    """
    keys = _keys(by) + (["model"] if per_model and by != "model" else [])
    filtered = set(window.filters())
    if by in ("session", "cell", "batch") or window.session is not None or not filtered <= set(KEYS) or not getattr(reader, "totals", True):
        return _raw(reader, keys, window)
    since, until = window.bounds()
    (quarters, _), (days, _), (ever, _) = LEVELS
    if since is None and until is None and by not in ("day", "hour"):
        return _from_totals(reader, ever, by, per_model, window, None, None) + _excluded(reader, keys, window)
    first = None if since is None else -(-since // QUARTER_US)
    end = None if until is None else until // QUARTER_US
    if first is not None and end is not None and first >= end:
        return _raw(reader, keys, window)
    rows: list[tuple[Any, ...]] = []
    if first is not None and since is not None and since < first * QUARTER_US:
        rows += _raw(reader, keys, window, until_us=first * QUARTER_US)
    if end is not None and until is not None and end * QUARTER_US < until:
        rows += _raw(reader, keys, window, since_us=end * QUARTER_US)
    per_day = DAY_US // QUARTER_US
    first_day = None if first is None else -(-first // per_day)
    end_day = None if end is None else end // per_day
    if by in ("day", "hour") or (first_day is not None and end_day is not None and first_day >= end_day):
        return rows + _from_totals(reader, quarters, by, per_model, window, first, end) + _excluded(reader, keys, window)
    rows += _from_totals(reader, days, by, per_model, window, first_day, end_day)
    if first is not None and first_day is not None and first < first_day * per_day:
        rows += _from_totals(reader, quarters, by, per_model, window, first, first_day * per_day)
    if end is not None and end_day is not None and end_day * per_day < end:
        rows += _from_totals(reader, quarters, by, per_model, window, end_day * per_day, end)
    return rows + _excluded(reader, keys, window)


def _excluded(reader: Reader, keys: list[str], window: Window) -> list[tuple[Any, ...]]:
    """The rows of the session left out, to take away from totals that count them (read by session and time)."""
    if window.exclude_session is None:
        return []
    return _negated(_raw(reader, keys, window, session=window.exclude_session), len(keys))


def _local_key(by: str, quarter: int, zone: Any) -> str:
    moment = datetime.fromtimestamp(quarter * QUARTER_US / 1e6, timezone.utc).astimezone(zone)
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
        if not values[index["calls"]]:
            continue  # a session's rows taken away left nothing
        count = values[index["latency_n"]] or 0
        result.append(
            {
                "key": key,
                "calls": values[index["calls"]] or 0,
                "input_tokens": values[index["input_tokens"]] or 0,
                "output_tokens": values[index["output_tokens"]] or 0,
                "cost_usd": values[index["cost_usd"]] if values[index["cost_n"]] else None,
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
    rows = run_query(
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
    by_user = fold(aggregate(store, "user", Window(since=day_start)), "user")
    index = {name: n for n, name in enumerate(MEASURES)}

    def today(groups: Iterable[list[Any]]) -> dict[str, Any]:
        sums = [sum(_number(v[index[name]]) or 0 for v in groups) for name in ("cost_usd", "calls", "errors", "refused")]
        return {"cost_usd": float(sums[0]), "calls": int(sums[1]), "errors": int(sums[2]), "refused": int(sums[3])}

    shared = bool(getattr(store, "shared", False))
    own = today(by_user.values() if user is None else [v for k, v in by_user.items() if k == user])
    team = today(by_user.values())
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
    # Two queries: each is one step down its index (together in one, SQLite would scan the table).
    last_id = run_query(store, "SELECT MAX(id) FROM usage", [])[0][0]
    last_us = run_query(store, "SELECT MAX(timestamp_us) FROM usage", [])[0][0]
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
    """Rows in memory read through the ledger's own SQL: an in-memory SQLite table holding them (no indexes, no
    running totals: a session's rows are few, and summed faster than totals are kept)."""

    dialect = "sqlite"
    shared = False
    totals = False

    def __init__(self, rows: Sequence[UsageRow]) -> None:
        self.connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.connection.execute(f"CREATE TABLE usage (id INTEGER PRIMARY KEY, uid TEXT, {ROW_COLUMNS})")
        self.connection.executemany(INSERT_ROW, [[str(n), *row_values(row)] for n, row in enumerate(rows)])

    def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, parameters).fetchall()


def memory_reader(rows: Sequence[UsageRow]) -> Reader:
    """A ``Reader`` over rows in memory (a session's), for the same views as the ledger's."""
    return _MemoryReader(rows)
