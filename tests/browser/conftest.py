"""The browser tests' JupyterLab: the ``lab`` fixture (a server on 127.0.0.1 with a token, in temporary
directories, its kernels pointed at the stub server) and the helpers that drive its page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import ROOT, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"
#: Longest wait for one step (JupyterLab's first start, a kernel importing litellm) on a 2-core machine.
STEP_MS = 30_000


def require(available: bool, what: str) -> None:
    """Skip without ``what`` locally; under CI (CI=true) its absence is a failure."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test needs {what}; .ci/run installs it (CI=true: not skipping)")
    pytest.skip(f"the browser test needs {what} (apt-get install chromium; pip install -e '.[test]')")


@dataclass
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    root: Path
    log: Path


def write_settings(settings_dir: Path) -> None:
    """User settings: save widget state with the notebook; no news or update checks (no network)."""
    plugins = {
        "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {"saveState": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in plugins.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture
def lab_environment() -> dict[str, str]:
    """Settings a test module adds to the server's (and so its kernels') environment: override it there."""
    return {}


@pytest.fixture
def lab(tmp_path: Path, stub: StubServer, lab_environment: dict[str, str]) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a token; its kernels reach the stub server with a secret key."""
    require(CHROMIUM.exists(), f"Chromium at {CHROMIUM}")
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as error:
        require(False, f"the Python package {error.name}")
    root, home = tmp_path / "notebooks", tmp_path / "home"
    for directory in (root, home):
        directory.mkdir()
    write_settings(home / "lab-settings")
    token = uuid.uuid4().hex
    port = free_port()
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LLM_", "JUPYTER", "IPYTHON", "OPENAI_", "ANTHROPIC_", "AZURE_")) and name != "PYTEST_CURRENT_TEST"
    }
    environment.update(
        {
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "IPYTHONDIR": str(home / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "LLM_BASE_URL": stub.base_url,
            "LLM_API_KEY": SECRET,
            "LLM_USAGE_DB": ":memory:",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_OFFLINE_MODE": "true",
            **lab_environment,
        }
    )
    log = tmp_path / "jupyterlab.log"
    command = [
        # The server's own python: jupyter_client starts the "python3" kernel with this interpreter.
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
    ]
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STEP_MS / 1000
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Lab(url, token, root, log)
    finally:
        # The server shuts its kernels down on SIGTERM; what is left of the group it started goes after.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def outputs_text(page: Any, index: int, showing: str) -> str:
    """The text of cell ``index``'s outputs, once they show ``showing``.

    The prompt's number can show before the outputs are drawn (a Markdown output renders after the reply has
    come), so a single read right after it may find the area still empty.
    """
    from playwright.sync_api import expect

    area = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea")
    expect(area).to_contain_text(showing, timeout=STEP_MS)
    return str(area.inner_text())


def run_cell(page: Any, index: int) -> None:
    """Click into cell ``index`` and run it with Shift+Enter, as a user does.

    Right after the page opens, JupyterLab may still be connecting to the kernel and let a run go by
    (the prompt stays ``[ ]``): then the user presses Shift+Enter again.
    """
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputArea-prompt")
    for attempt in range(3):
        if attempt:
            print(f"cell {index} did not start: pressing Shift+Enter again")
        cell.locator(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if re.fullmatch(r"\[(\*|\d+)\]:", prompt.inner_text().strip()):
                return
            page.wait_for_timeout(100)
    raise AssertionError(f"cell {index} did not start running")


def wait_for_prompt_number(page: Any, index: int) -> None:
    """Wait until cell ``index`` has finished: its prompt shows a number instead of ``[*]``."""
    prompt = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputArea-prompt")
    deadline = time.monotonic() + STEP_MS / 1000
    while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
        assert time.monotonic() < deadline, f"cell {index} did not finish"
        page.wait_for_timeout(200)


@contextmanager
def notebook_page(
    lab: Lab, name: str, cells: Sequence[str], *, viewport: tuple[int, int] = (1200, 1000), failure_shot: str = "browser-failure.png"
) -> Iterator[Any]:
    """Write the notebook ``name`` of code ``cells`` into the lab's root and open it in headless Chromium: the page,
    once JupyterLab shows its last cell and an idle kernel. On a failure, a screenshot in ``artifacts/`` and the end
    of JupyterLab's log, to see why."""
    from playwright.sync_api import expect, sync_playwright

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, lab.root / name)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(STEP_MS)
            page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
            page.locator(".jp-Notebook .jp-Cell").nth(len(cells) - 1).wait_for()
            expect(page.locator(".jp-StatusBar-Widget", has_text="Idle")).not_to_have_count(0)
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / failure_shot))
            print(f"JupyterLab's log:\n{lab.log.read_text()[-5000:]}")
            raise
        finally:
            browser.close()
