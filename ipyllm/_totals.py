"""The ledger's running totals: per quarter hour, model, user, notebook and host, what its rows add up to, kept by a
trigger as each row is inserted (in SQLite and in PostgreSQL alike).

A million-row ledger cannot be summed in 0.3 s by reading its rows (SQLite scans 1M rows in more than a second), but
its totals are a few thousand rows, whatever the ledger's size: ``%llm_usage --all --by model``, the status bar and
the usage panel read these (``ipyllm._views``), and only the rows of a window's partial quarter hours, or of one
session, from the ledger itself. Each figure is a sum, so totals can be added and subtracted: a session's own rows
are taken out of them by reading its rows alone (indexed by session and time).

A key that is NULL is stored as '' with its bit set in ``nulls`` (a primary key cannot hold NULL), so that NULL
and '' stay apart.
"""

from __future__ import annotations

__all__ = [
    "BACKFILL",
    "DAY_US",
    "EVER_US",
    "FIGURES",
    "KEYS",
    "LEVELS",
    "QUARTER_US",
    "TABLES",
    "contributions",
    "pg_trigger",
    "sqlite_trigger",
]

#: The totals' time steps: a quarter hour (every time zone's offset is a whole number of them), for days and hours
#: in any time zone and the edges of a window; a UTC day, for the many days inside a window, 96 times fewer rows;
#: and all time, for a view of the whole ledger.
QUARTER_US = 900_000_000
DAY_US = 96 * QUARTER_US
#: A step longer than any ledger's time (every row's bucket is 0): the all-time totals ``%llm_usage --all`` reads.
EVER_US = 1 << 62
#: Each level of totals: its table and its step.
LEVELS = (("usage_totals", QUARTER_US), ("usage_day_totals", DAY_US), ("usage_all_totals", EVER_US))
#: The totals' keys besides the quarter hour, and each one's bit in ``nulls``.
KEYS = ("model", "user", "notebook", "host")
_Q = '"user"'  # a reserved word in PostgreSQL


def _col(name: str) -> str:
    return _Q if name == "user" else name


#: The figures per group, each one row's share of it (``{r}`` is the row: ``NEW.`` in a trigger, nothing in a query).
FIGURES: tuple[tuple[str, str], ...] = (
    ("calls", "1"),
    ("input_tokens", "COALESCE({r}prompt_tokens, 0)"),
    ("output_tokens", "COALESCE({r}completion_tokens, 0)"),
    ("cost_usd", "COALESCE({r}cost_usd, 0)"),
    ("cost_n", "CASE WHEN {r}cost_usd IS NULL THEN 0 ELSE 1 END"),
    ("errors", "CASE WHEN {r}status = 'error' THEN 1 ELSE 0 END"),
    ("refused", "CASE WHEN {r}status = 'over_budget' THEN 1 ELSE 0 END"),
    ("retries", "CASE WHEN {r}attempts > 1 THEN {r}attempts - 1 ELSE 0 END"),
    ("latency_sum", "COALESCE({r}latency_s, 0)"),
    ("latency_n", "CASE WHEN {r}latency_s IS NULL THEN 0 ELSE 1 END"),
    # The saving against list price (``_savings``), priced per model by the reader: the rows it is known for (a row
    # from ipyllm's cache saves 0; another needs its prompt tokens and cost), their tokens and their cost.
    ("saved_rows", "CASE WHEN {r}status = 'cached' OR ({r}prompt_tokens IS NOT NULL AND {r}cost_usd IS NOT NULL) THEN 1 ELSE 0 END"),
    ("saved_prompt", "CASE WHEN {r}status = 'cached' THEN 0 WHEN {r}cost_usd IS NOT NULL THEN COALESCE({r}prompt_tokens, 0) ELSE 0 END"),
    (
        "saved_completion",
        "CASE WHEN {r}status = 'cached' THEN 0 WHEN {r}cost_usd IS NOT NULL AND {r}prompt_tokens IS NOT NULL"
        " THEN COALESCE({r}completion_tokens, 0) ELSE 0 END",
    ),
    ("saved_cost", "CASE WHEN {r}status = 'cached' THEN 0 WHEN {r}prompt_tokens IS NOT NULL THEN COALESCE({r}cost_usd, 0) ELSE 0 END"),
)
_REAL = {"cost_usd", "latency_sum", "saved_cost"}


def contributions(row: str = "") -> list[str]:
    """Each figure's share of one row (``row``: ``NEW.`` in a trigger, nothing in a query)."""
    return [share.format(r=row) for _, share in FIGURES]


def _keys(row: str, step: int) -> list[str]:
    stored = [f"{row}timestamp_us / {step}", *(f"COALESCE({row}{_col(k)}, '')" for k in KEYS)]
    nulls = " + ".join(f"CASE WHEN {row}{_col(k)} IS NULL THEN {1 << n} ELSE 0 END" for n, k in enumerate(KEYS))
    return [*stored, nulls]


_KEY_COLUMNS = ", ".join(["bucket", *map(_col, KEYS), "nulls"])
_FIGURE_COLUMNS = ", ".join(name for name, _ in FIGURES)


def TABLES(integer: str, real: str) -> tuple[str, ...]:  # noqa: N802 - statements, named as such
    """The totals tables, in the dialect's types (``bucket``: the row's time divided by the level's step)."""
    figures = ", ".join(f"{name} {real if name in _REAL else integer} NOT NULL DEFAULT 0" for name, _ in FIGURES)
    keys = ", ".join(f"{_col(k)} TEXT NOT NULL" for k in KEYS)
    columns = f"bucket {integer} NOT NULL, {keys}, nulls INTEGER NOT NULL, {figures}"
    return tuple(f"CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY ({_KEY_COLUMNS}))" for table, _ in LEVELS)


def _upserts() -> str:
    """One row added to every level's totals (statements of a trigger's body)."""
    statements = []
    for table, step in LEVELS:
        added = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name, _ in FIGURES)
        values = ", ".join([*_keys("NEW.", step), *contributions("NEW.")])
        statements.append(
            f"INSERT INTO {table} ({_KEY_COLUMNS}, {_FIGURE_COLUMNS}) VALUES ({values}) ON CONFLICT ({_KEY_COLUMNS}) DO UPDATE SET {added};"
        )
    return " ".join(statements)


_GROUPS = ", ".join(str(n) for n in range(1, len(KEYS) + 3))
#: The totals of the rows already in a ledger, when the tables are made (the keys grouped as the trigger keys them).
BACKFILL = tuple(
    f"INSERT INTO {table} ({_KEY_COLUMNS}, {_FIGURE_COLUMNS}) SELECT {', '.join(_keys('', step))}, "
    f"{', '.join(f'SUM({share})' for share in contributions(''))} FROM usage GROUP BY {_GROUPS}"
    for table, step in LEVELS
)


def sqlite_trigger() -> str:
    return f"CREATE TRIGGER IF NOT EXISTS usage_totals_add AFTER INSERT ON usage BEGIN {_upserts()} END"


def _statement_upserts(rows: str) -> str:
    """Every level's totals of the rows of one statement (the trigger's transition table ``rows``), added in one upsert
    per level: PostgreSQL keeps each update of a row as a new version until the transaction ends, so a row of totals
    updated once per inserted row would cost time quadratic in the rows a transaction inserts."""
    statements = []
    for (table, _), backfill in zip(LEVELS, BACKFILL, strict=True):
        added = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name, _ in FIGURES)
        grouped = backfill.replace(" FROM usage GROUP BY ", f" FROM {rows} GROUP BY ")
        # In key order, so that two kernels adding to the same rows of totals lock them in the same order (no deadlock).
        statements.append(f"{grouped} ORDER BY {_GROUPS} ON CONFLICT ({_KEY_COLUMNS}) DO UPDATE SET {added};")
    return " ".join(statements)


def pg_trigger() -> tuple[str, str, str]:
    """The trigger's function, and the trigger (made anew): once per statement, on the rows it inserted."""
    function = (
        "CREATE OR REPLACE FUNCTION ipyllm_usage_totals() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN "
        f"{_statement_upserts('added')} RETURN NULL; END $body$"
    )
    return (
        function,
        "DROP TRIGGER IF EXISTS usage_totals_add ON usage",
        "CREATE TRIGGER usage_totals_add AFTER INSERT ON usage REFERENCING NEW TABLE AS added"
        " FOR EACH STATEMENT EXECUTE FUNCTION ipyllm_usage_totals()",
    )
