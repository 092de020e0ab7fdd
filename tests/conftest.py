"""Shared fixtures: a stub server on 127.0.0.1, a clean session, and no real network or key anywhere."""

from __future__ import annotations

import os

# Nothing a test does may touch the user's own Jupyter data (the default ledger lives there).
os.environ["JUPYTER_DATA_DIR"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ipyllm-tests-{os.getpid()}", "jupyter-data")

# Before anything imports litellm: bundled price map, no tokenizer or catalogue downloads.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_API_KEY", "LLM_API_KEY", "LLM_BASE_URL", "LLM_MODEL"):
    os.environ.pop(variable, None)

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import ipyllm  # noqa: E402
from ipyllm import _api  # noqa: E402
from ipyllm._client import Client  # noqa: E402
from ipyllm._ledger import MemoryLedger  # noqa: E402
from ipyllm.testing import StubServer  # noqa: E402

SECRET = "sk-test-SECRET-do-not-leak-7f3a9c"


class SleepRecorder:
    """Stands in for time.sleep: records each retry wait instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def session(sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch) -> Iterator[_api.Session]:
    """A fresh ledger and a client whose retry waits are recorded, not slept."""
    fresh = _api.Session(MemoryLedger(), Client(sleep=sleeps))
    monkeypatch.setattr(_api, "session", fresh)
    yield fresh


@pytest.fixture
def clean_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ipyllm.LLMConfig]:
    """The session configuration at its defaults for the test, restored afterwards.

    The default ledger lands in this test's own Jupyter data directory, never the user's.
    """
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
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
