"""Shared fixtures: a stub server on 127.0.0.1, a clean session, and no real network or key anywhere."""

from __future__ import annotations

import os

# Nothing a test does may touch the user's own Jupyter data (the default ledger lives there).
os.environ["JUPYTER_DATA_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ipyllm-tests-{os.getpid()}", "jupyter-data")
# ... nor the user's cache (the usage frames kept between kernels: ``ipyllm._framefile``).
os.environ["IPYLLM_CACHE_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ipyllm-tests-{os.getpid()}", "cache")

# Before anything imports litellm: bundled price map, no tokenizer or catalogue downloads.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
# No setting of the user's (LLM_*) and no provider key or server may reach a test, nor a kernel it starts.
for variable in list(os.environ):
    if variable.startswith("LLM_") or variable.endswith(("_API_KEY", "_API_BASE", "_BASE_URL")):
        os.environ.pop(variable, None)

import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402

import ipyllm  # noqa: E402
from ipyllm import _api  # noqa: E402
from ipyllm._engine import Client  # noqa: E402
from ipyllm._store import MemoryLedger  # noqa: E402
from ipyllm.testing import StubServer  # noqa: E402

if TYPE_CHECKING:
    from .postgres.pg import PostgresServer

#: The mutation check (tests/tools/mutate.py) is run by hand, not collected.
collect_ignore = ["tools"]

# A shell without job control starts a background command (`./run-tests &`) with Ctrl-C ignored, and Python
# then leaves SIGINT ignored: the tests that press Ctrl-C need it to raise KeyboardInterrupt, as in a terminal
# or a kernel.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: The test key. Deliberately not shaped like any provider's key (no ``sk-``): only exact-key redaction hides it.
SECRET = "Hush.this-is-the-tests-own-key.7f3a9c"


class SleepRecorder:
    """Stands in for time.sleep: records each retry wait instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def config_observers() -> list[Any]:
    """Every callback observing ``ipyllm.config`` (a picker left open leaves its own here)."""
    return [callback for kinds in ipyllm.config._trait_notifiers.values() for callbacks in kinds.values() for callback in callbacks]


def open_pickers() -> list[Any]:
    """Pickers made in this process and not closed yet."""
    widget = sys.modules.get("ipyllm._widget")
    if widget is None:
        return []
    from ipywidgets.widgets.widget import _instances

    return [w for w in list(_instances.values()) if isinstance(w, widget.Picker) and not w._closed]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: its own ledger, the configuration at its defaults (restored afterwards), no picker left open.

    - ``JUPYTER_DATA_DIR`` is this test's own directory, so the default ledger (and the cache in it) is
      fresh, and kernels the test starts inherit it: no test reads rows another test or kernel wrote,
      nor the user's ledger. So is ``IPYLLM_CACHE_DIR``, where usage frames are kept between kernels.
    - The working directory is ``tmp_path``: what a test, or a process it starts without a ``cwd`` of its own
      (ipyllm's helper processes, say), writes to a relative path lands there, never in the repository.
    - ``ipyllm._api.session`` is a fresh session (no rows, no open ledger files, no warnings said).
    - The configuration starts at its defaults and gets back its earlier values afterwards.
    - A picker the test left open fails the test (its observers would follow every later test); it is
      closed in any case, and no observer of the configuration may remain.
    """
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    monkeypatch.setenv("IPYLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLM_USAGE_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_api, "session", _api.Session(config=ipyllm.config, ledger=MemoryLedger(), client=Client(), id=_api.SESSION_ID))
    observers_before = config_observers()
    saved = ipyllm.config.settings()
    defaults = {name: trait.default() for name, trait in ipyllm.config.traits(config=True).items()}
    ipyllm.config.update(**defaults)
    magics = sys.modules.get("ipyllm._magics")
    if magics is not None:
        magics.conversation.clear()
    yield
    left_open = open_pickers()
    for picker in left_open:
        picker.close()
    for store in _api.session.records._stores.values():
        store.close()
    ipyllm.config.update(**saved)
    if magics is not None or (magics := sys.modules.get("ipyllm._magics")) is not None:
        magics.conversation.clear()
    assert not left_open, f"the test left {len(left_open)} picker(s) open: close them (picker.close())"
    leaked = [callback for callback in config_observers() if callback not in observers_before]
    assert not leaked, f"observers left on ipyllm.config: {leaked}"


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def session(sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch) -> Iterator[_api.Session]:
    """A fresh ledger and a client whose retry waits are recorded, not slept."""
    fresh = _api.Session(config=ipyllm.config, ledger=MemoryLedger(), client=Client(sleep=sleeps), id=_api.SESSION_ID)
    monkeypatch.setattr(_api, "session", fresh)
    yield fresh


@pytest.fixture
def clean_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ipyllm.LLMConfig]:
    """The session configuration at its defaults for the test, restored afterwards.

    The default ledger lands in this test's own Jupyter data directory, never the user's.
    """
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    monkeypatch.setenv("IPYLLM_CACHE_DIR", str(tmp_path / "cache"))
    saved = ipyllm.config.settings()
    defaults = {name: trait.default() for name, trait in ipyllm.config.traits(config=True).items()}
    ipyllm.config.update(**defaults)
    yield ipyllm.config
    ipyllm.config.update(**saved)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def live(stub: StubServer, session: _api.Session, clean_config: ipyllm.LLMConfig) -> StubServer:
    """The session pointed at the stub server, with a secret key, short timeouts and recorded waits."""
    clean_config.update(base_url=stub.base_url, api_key=SECRET, timeout=5)
    return stub


@pytest.fixture
def ip(live: StubServer) -> Iterator[object]:
    """A fresh IPython shell (history off) with ipyllm loaded, pointed at the stub server."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    from ipyllm import _magics

    InteractiveShell.clear_instance()
    settings = Config()
    settings.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=settings)
    shell.run_line_magic("load_ext", "ipyllm")
    _magics.conversation.clear()
    yield shell
    shell.run_line_magic("unload_ext", "ipyllm")
    _magics.conversation.clear()
    InteractiveShell.clear_instance()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A real PostgreSQL server, one per test process (the team ledger's, the server's and the browser's tests);
    skipped when PostgreSQL or psycopg is not installed, except under CI=true, where that fails."""
    from .postgres.pg import PostgresServer, find_binaries  # here: tests.helpers, which pg uses, imports this module

    binaries = find_binaries()
    if binaries is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): .ci/run installs it with apt")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): the team ledger tests need a real server")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("psycopg is not installed (pip install 'ipyllm[postgres]')")
    server = PostgresServer(binaries).start()
    yield server
    server.remove()
