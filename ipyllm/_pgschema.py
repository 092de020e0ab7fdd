"""The PostgreSQL ledger's schema and SQL: the SQLite ledger's tables in PostgreSQL's types, its versioned
migrations (and the migration itself), the statements the store runs, and the frame read from ``COPY`` CSV."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from ipyllm._batchclaim import PG_CLAIMS
from ipyllm._batchledger import PG_TABLE
from ipyllm._totals import BACKFILL, TABLES, pg_trigger
from ipyllm._usage import COLUMNS, column_array, frame_from_columns
from ipyllm.errors import LedgerUnavailableError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import psycopg

__all__ = [
    "HEADROOM",
    "INSERT_ROW",
    "INSERT_SETTLING",
    "LOCK_BUDGETS",
    "LOCK_MIGRATE",
    "LOCK_SPACE",
    "MIGRATIONS",
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "csv_frame",
    "insert_rows",
    "migrate",
    "write_entry",
]

# "user" is a reserved word in PostgreSQL.
NAMES = ["timestamp_us", *(f'"{c}"' if c == "user" else c for c in list(COLUMNS)[1:])]
ROW_COLUMNS = ", ".join(NAMES)
INSERT_ROW = f"INSERT INTO usage (uid, {ROW_COLUMNS}) VALUES (%s, {', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (uid) DO NOTHING"


def insert_rows(count: int) -> str:
    """One statement inserting ``count`` rows (each: uid, then the row columns); rows already there skipped."""
    row = f"({', '.join(['%s'] * (len(COLUMNS) + 1))})"
    return f"INSERT INTO usage (uid, {ROW_COLUMNS}) VALUES {', '.join([row] * count)} ON CONFLICT (uid) DO NOTHING"


# One statement, so one round trip, and atomic: the row lands and its hold goes, or neither.
INSERT_SETTLING = f"WITH settled AS (DELETE FROM holds WHERE id = %s) {INSERT_ROW}"

#: Advisory lock keys (any two 32-bit numbers that other applications are unlikely to use).
LOCK_SPACE = 0x1B7E
LOCK_MIGRATE, LOCK_BUDGETS = 1, 2

#: Schema migrations: entry n takes the ledger from version n to n + 1 (the SQLite ledger's, in PostgreSQL's types).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE IF NOT EXISTS usage (
            id BIGSERIAL PRIMARY KEY,
            uid TEXT UNIQUE,
            timestamp_us BIGINT NOT NULL,
            session TEXT, cell INTEGER, source TEXT, kind TEXT, model TEXT, provider TEXT,
            prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,
            cost_usd DOUBLE PRECISION, latency_s DOUBLE PRECISION, attempts INTEGER, status TEXT, error TEXT)""",
        "CREATE INDEX IF NOT EXISTS usage_timestamp ON usage (timestamp_us)",
        "CREATE INDEX IF NOT EXISTS usage_session ON usage (session)",
    ),
    ("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, created_us BIGINT NOT NULL, kind TEXT, model TEXT, payload TEXT NOT NULL)",),
    (
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS cached_tokens INTEGER",
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS tokens_estimated BOOLEAN",
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS batch TEXT",
        'ALTER TABLE usage ADD COLUMN IF NOT EXISTS "user" TEXT',
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS host TEXT",
        'CREATE INDEX IF NOT EXISTS usage_user ON usage ("user", timestamp_us)',
        """CREATE TABLE IF NOT EXISTS holds (
            id TEXT PRIMARY KEY, session TEXT, "user" TEXT, host TEXT, pid INTEGER,
            amount DOUBLE PRECISION NOT NULL, created_us BIGINT NOT NULL, expires_us BIGINT NOT NULL)""",
    ),
    (
        # Issue 19: prompt-cache writes, and how a call was bought (every earlier call was live).
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS cache_creation_tokens INTEGER",
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS tier TEXT DEFAULT 'live'",
    ),
    (
        # Issue 19: provider batches, so that a batch outlives the kernel that sent it (``_batchledger``).
        PG_TABLE,
        "CREATE INDEX IF NOT EXISTS batches_map ON batches (map_key)",
    ),
    (
        # Issue 19: who is sending a map's batches right now, so that two kernels sending it at once send it once
        # (``_batchclaim``).
        PG_CLAIMS,
    ),
    (
        # Issue 20: images sent with a call (an earlier row's is unknown: NULL).
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS images INTEGER",
    ),
    (
        # Issue 21: the notebook a row came from (an earlier row's is unknown: NULL); a session's own rows read by time.
        "ALTER TABLE usage ADD COLUMN IF NOT EXISTS notebook TEXT",
        "CREATE INDEX IF NOT EXISTS usage_session_time ON usage (session, timestamp_us)",
        # Issue 21: the running totals the views read instead of a million rows (``_totals``).
        *TABLES("BIGINT", "DOUBLE PRECISION"),
        *pg_trigger(),
        *BACKFILL,
    ),
    (
        # Issue 21: the rows packed in column chunks, so that a fresh kernel reads a whole ledger's frame fast
        # (``_framechunks``).
        """CREATE TABLE IF NOT EXISTS frame_chunks (
            after_id BIGINT PRIMARY KEY, last_id BIGINT NOT NULL, row_count INTEGER NOT NULL, last_uid TEXT NOT NULL,
            format TEXT NOT NULL, data BYTEA NOT NULL)""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

#: What a limit leaves: the rows since its start, the live holds' sum and count, and which of the given holds
#: are among them (of one user, when given). One statement, so one snapshot: a row that lands meanwhile with its
#: hold's deletion is seen either as the hold or as the row, never both or neither.
HEADROOM = (
    "SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM usage"
    ' WHERE timestamp_us >= %(since)s AND (%(user)s::text IS NULL OR "user" = %(user)s)),'
    " h.held, h.holds, h.ids FROM (SELECT COALESCE(SUM(amount), 0) AS held, COUNT(*) AS holds,"
    " COALESCE(array_agg(id) FILTER (WHERE id = ANY(%(ids)s)), '{}') AS ids FROM holds"
    ' WHERE expires_us > %(now)s AND (%(user)s::text IS NULL OR "user" = %(user)s)) AS h'
)


def migrate(connection: psycopg.Connection[Any]) -> None:
    """Bring the schema to ``SCHEMA_VERSION``: many kernels starting at once migrate it once (under an advisory lock);
    a schema already there is only read, so a read-only server can still be read."""
    import psycopg

    try:
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
    except psycopg.errors.UndefinedTable:
        version = 0
    if version == SCHEMA_VERSION:
        return  # the usual case
    with connection.transaction():
        # Many kernels starting at once: one migrates, the others wait here and then find nothing to do.
        connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_SPACE, LOCK_MIGRATE])
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            newer = f"the ledger's schema version {version} is newer than this ipyllm's {SCHEMA_VERSION}"
            raise LedgerUnavailableError(f"{newer}: upgrade ipyllm")
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        if row is None:
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", [SCHEMA_VERSION])
        else:
            connection.execute("UPDATE schema_version SET version = %s", [SCHEMA_VERSION])


def write_entry(cursor: psycopg.Connection[Any] | psycopg.Cursor[Any], uid: str, release: str | None, values: list[Any] | None) -> None:
    """Write one spooled entry: a row (with the hold it settles, in one statement), or the release of a hold."""
    if values is None:
        cursor.execute("DELETE FROM holds WHERE id = %s", [release])
    elif release is None:
        cursor.execute(INSERT_ROW, [uid, *values])
    else:
        cursor.execute(INSERT_SETTLING, [release, uid, *values])


def csv_frame(buffer: io.BytesIO, columns: list[str] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """The rows' ids and usage frame from ``COPY`` CSV of ``id`` and the row columns (``columns``, the time among them:
    default all), sorted as the SQLite ledger sorts (by time, then id)."""
    import numpy as np
    import pandas as pd

    columns = columns or list(COLUMNS)
    names = ["id", *columns]
    dtypes = {"id": "int64", "timestamp": "int64", **{name: COLUMNS[name] for name in columns if name != "timestamp"}}
    buffer.seek(0)
    if not buffer.getbuffer().nbytes:
        return np.zeros(0, dtype="int64"), frame_from_columns({name: [] for name in columns})
    frame = pd.read_csv(
        buffer, header=None, names=names, dtype=dtypes, keep_default_na=False, na_values=["\\N"], true_values=["t"], false_values=["f"]
    )
    frame = frame.sort_values(["timestamp", "id"], kind="stable", ignore_index=True)
    ids = frame.pop("id").to_numpy(dtype="int64")
    frame["timestamp"] = column_array(COLUMNS["timestamp"], frame["timestamp"].to_numpy())
    return ids, frame
