"""One session's records: its rows in memory (always complete) and in the ledger its ``usage_db`` names, and the
response cache kept there.

Whatever happens to the ledger, a call's row is kept: a ledger that cannot be used says so once, in one line,
and the rows stay in memory (a server that is away, or a file that cannot be written for now, is tried again;
a file that is not a ledger is given up for the session). Safe to use from several threads: the store is
opened under a lock, so two threads asking at once get the same one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ipyllm._batchrecords import BatchRecords, CacheWrite
from ipyllm._budget import local_midnight
from ipyllm._config import LLMConfig
from ipyllm._ledger import open_store, store_key
from ipyllm._locations import Memory, Server, SQLiteFile, default_usage_db
from ipyllm._notices import notice
from ipyllm._store import MemoryLedger, Store
from ipyllm._usage import UsageRow, to_frame
from ipyllm._views import MEASURES, Window, aggregate, fold, memory_reader, selected_columns
from ipyllm.errors import LedgerUnavailableError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CacheWrite", "Records"]

T = TypeVar("T")


#: What the default ledger's place (the Jupyter data directory) depends on.
_DATA_DIR_VARIABLES = ("JUPYTER_DATA_DIR", "JUPYTER_PLATFORM_DIRS", "XDG_DATA_HOME", "HOME", "APPDATA")


class Records(BatchRecords):
    """A session's rows and cache.

    Parameters
    ----------
    session_id
        The session whose rows these are.
    config
        The session's configuration: its ``usage_db`` names the ledger, asked again at every use.
    memory
        The rows in memory (a fresh ``MemoryLedger`` by default).
    """

    def __init__(self, session_id: str, config: LLMConfig, memory: MemoryLedger | None = None) -> None:
        self.session_id = session_id
        self.config = config
        self.memory = memory or MemoryLedger()
        self._lock = threading.RLock()
        self._stores: dict[str, Store | None] = {}
        self._keys: dict[Any, tuple[str, SQLiteFile | Server]] = {}
        self._warned: set[str] = set()
        self._memory_cache: dict[str, str] = {}
        self._spend_today: tuple[float, float, float] | None = None

    # -- the ledger ------------------------------------------------------------------------------------------
    def store(self) -> Store | None:
        """The ledger named by ``usage_db``: a SQLite file or a team's server (None for ``:memory:`` or a file
        already found broken)."""
        location = self.config.usage_db
        if isinstance(location, Memory):
            return None
        # The default resolved once per environment (finding the Jupyter data directory takes 0.1 ms): every call asks.
        cached = (None, *map(os.environ.get, _DATA_DIR_VARIABLES)) if location is None else location
        found = self._keys.get(cached)
        if found is None:
            where = default_usage_db() if location is None else location
            found = self._keys[cached] = (store_key(where), where)
        key, where = found
        if f"store:{key}" in self._warned:
            return None
        store = self._stores.get(key)
        if store is not None or key in self._stores:
            return store
        with self._lock:  # one store per ledger, whichever thread asks first
            if key not in self._stores:
                store = self._stores[key] = open_store(where)
                for other_key, other in list(self._stores.items()):
                    if other is not None and other is not store and store is not None and other.name == store.name:
                        other.close()  # the same server with another password: its waiting rows are in the same spool
                        del self._stores[other_key]
            return self._stores[key]

    def using_store(self, action: Callable[[Store], T]) -> T | None:
        """Run ``action`` on the ledger; if it cannot be used, say so once and return None.

        A file that is not a ledger is given up for the session; a server that is away, or a file that cannot
        be written for now, is tried again (the store has said so itself, once per outage).
        """
        store = self.store()
        if store is None:
            return None
        try:
            return action(store)
        except LedgerUnavailableError as error:
            if not error.said:
                self.warn_once(f"away:{error}" if error.transient else f"store:{store.name}", str(error))
            return None

    def warn_once(self, key: str, message: str) -> None:
        """Say ``message`` the first time ``key`` comes up in this session."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        notice(message)

    def budget_warning(self, key: str, message: str) -> None:
        """Budgets could not hold a call's cost in the ledger: said once, and the ledger given up (``store:``), unless
        the ledger said so itself (it cannot be written for now: its rows wait in its spool, and it is tried again)."""
        if any(message == getattr(store, "last_said", None) for store in list(self._stores.values())):
            return
        self.warn_once(key, message)

    def close(self) -> None:
        """Close every store this session opened (a server's writer writes what waits first)."""
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            if store is not None:
                store.close()

    # -- rows ------------------------------------------------------------------------------------------------
    def record(self, row: UsageRow, release: str | None = None) -> None:
        """File a finished call's row: committed to the ledger (settling the hold ``release``), then in memory."""
        self.using_store(lambda store: store.append(row, release))
        self.memory.append(row)

    def record_many(self, rows: list[UsageRow], entries: list[CacheWrite]) -> None:
        """File finished rows (no holds to settle) and cache entries in one commit."""
        cached = [(key, kind, model, json.dumps(value)) for key, kind, model, value in entries]
        if self.store() is None:
            with self._lock:
                self._memory_cache.update((key, payload) for key, _, _, payload in cached)
        else:
            self.using_store(lambda store: store.append_many(rows, cached))
        for row in rows:
            self.memory.append(row)

    def frame(self, all_sessions: bool = False, window: Window | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """This session's rows as the usage frame; with ``all_sessions``, every row in the ledger too. Of ``window`` only
        (filtered in the database) and ``columns`` only (and the time)."""
        window = window or Window()
        names = selected_columns(columns)
        mine = to_frame([row for row in self.memory.rows(None if all_sessions else self.session_id) if window.matches(row)])[names]
        if not all_sessions:
            return mine
        others = self.using_store(lambda store: store.frame(self.session_id, window, names))
        if others is None or others.empty:
            return mine
        import pandas as pd

        if mine.empty:
            return others
        both = pd.concat([others, mine], ignore_index=True)
        if mine["timestamp"].is_monotonic_increasing and others["timestamp"].iloc[-1] <= mine["timestamp"].iloc[0]:
            return both  # this session's rows are the latest, as usual: in time order already
        return both.sort_values("timestamp", kind="stable", ignore_index=True)

    def sums(self, by: str, all_sessions: bool = False) -> list[tuple[Any, ...]]:
        """This session's rows (with ``all_sessions``, the ledger's too) summed per ``by`` and model (``_views.aggregate``):
        this session's from memory, the others' by the database (its running totals, less this session's rows)."""
        rows = aggregate(memory_reader(self.memory.rows(None if all_sessions else self.session_id)), by, Window(), per_model=True)
        if all_sessions:
            rows += self.using_store(lambda store: aggregate(store, by, Window(exclude_session=self.session_id), per_model=True)) or []
        return rows

    def spend_today(self, user: str) -> tuple[float, float] | None:
        """The team's and ``user``'s spend since local midnight on a shared ledger (None otherwise).

        Other sessions' spend is read from the server at most every two seconds (the picker asks after every
        call), in one query on its running totals, less this session's rows; this session's comes from memory, so
        its calls show at once, written to the server or not.
        """
        store = self.store()
        if store is None or not store.shared:
            return None
        midnight, now = local_midnight(), time.monotonic()
        if self._spend_today is None or now - self._spend_today[0] > 2:
            window = Window(since=midnight, exclude_session=self.session_id)
            by_user = self.using_store(lambda s: fold(aggregate(s, "user", window), "user"))
            if by_user is None:
                return None
            cost, counted = MEASURES.index("cost_usd"), MEASURES.index("cost_n")
            spent = {key: float(values[cost] or 0) if values[counted] else 0.0 for key, values in by_user.items()}
            self._spend_today = (now, sum(spent.values()), spent.get(user, 0.0))
        mine = self.memory.spend(since=midnight, session=self.session_id)
        mine_as_user = self.memory.spend(since=midnight, session=self.session_id, user=user)
        return self._spend_today[1] + mine, self._spend_today[2] + mine_as_user

    # -- the response cache ------------------------------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        if self.store() is None:
            payload = self._memory_cache.get(key)
        else:
            payload = self.using_store(lambda store: store.cache_get(key))
        return json.loads(payload) if payload else None

    def cache_get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The cached answers among ``keys``, looked up at once."""
        if self.store() is None:
            found: dict[str, str] = {key: self._memory_cache[key] for key in keys if key in self._memory_cache}
        else:
            found = self.using_store(lambda store: store.cache_get_many(keys)) or {}
        return {key: json.loads(payload) for key, payload in found.items() if payload}

    def cache_put(self, key: str, kind: str, model: str, value: dict[str, Any]) -> None:
        payload = json.dumps(value)
        if self.store() is None:
            with self._lock:
                self._memory_cache[key] = payload
        else:
            self.using_store(lambda store: store.cache_put(key, kind, model, payload))
