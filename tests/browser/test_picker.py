"""The model picker as a user meets it: real JupyterLab, a real kernel, headless Chromium, the mouse.

JupyterLab runs in a subprocess on 127.0.0.1 with a token, in temporary directories (nothing is read
from or written to the user's own Jupyter or IPython settings), with widget state saving switched on so
that the saved notebook holds the widgets' state. The kernel talks to the stub server of this test
process. Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; without it the test is
skipped locally and fails under CI. The rendered picker is saved to ``artifacts/picker.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET

pytestmark = pytest.mark.browser

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
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TYPED_KEY = "sk-typed-into-the-browser-5e6f7a8b9c"
PROMPT = "Which model answers this?"
CELLS = ["%load_ext ipyllm", "%llm_config", f"%%llm\n{PROMPT}"]
#: Longest wait for one step (JupyterLab's first start, a kernel importing litellm) on a 2-core machine.
STEP_MS = 30_000


def require(available: bool, what: str) -> None:
    """Skip without ``what`` locally; under CI (CI=true) its absence is a failure."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser test needs {what}; .ci/run installs it (CI=true: not skipping)")
    pytest.skip(f"the browser test needs {what} (apt-get install chromium; pip install -e '.[test]')")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
def lab(tmp_path: Path, stub: StubServer) -> Iterator[Lab]:
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
        server = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
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


def outputs_text(page: Any, index: int) -> str:
    return str(page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea").inner_text())


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


def test_the_picker_in_jupyterlab(lab: Lab, stub: StubServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as steps do: %llm_config waits for litellm's import (10 s and more on a busy machine).
    expect.set_options(timeout=STEP_MS)
    started = time.perf_counter()
    notebook = lab.root / "picker.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, notebook)
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.set_default_timeout(STEP_MS)
            page.goto(f"{lab.url}/lab/tree/picker.ipynb?token={lab.token}")
            page.locator(".jp-Notebook .jp-Cell").nth(2).wait_for()
            expect(page.locator(".jp-StatusBar-Widget", has_text="Idle")).not_to_have_count(0)

            run_cell(page, 0)
            wait_for_prompt_number(page, 0)
            run_cell(page, 1)
            picker = page.locator(".ipyllm-picker")
            expect(picker).to_be_visible()
            expect(picker).to_contain_text("gpt-4o-mini (openai)")
            expect(picker).to_contain_text("key: set for this session")

            # Search the list, then choose gpt-4o with the mouse.
            search = picker.locator("input[type='text']").first
            search.click()
            page.keyboard.type("gpt-4o")
            option = picker.locator("select[size] option", has_text=re.compile(r"^gpt-4o$"))
            expect(option).to_have_count(1)
            # The list shows the session's model (gpt-4o-mini); gpt-4o is above it: scroll up with the wheel.
            picker.locator("select[size]").hover()
            page.mouse.wheel(0, -2000)
            page.wait_for_timeout(300)
            box, shown = option.bounding_box(), picker.locator("select[size]").bounding_box()
            assert box is not None and shown is not None
            assert shown["y"] <= box["y"] and box["y"] + box["height"] <= shown["y"] + shown["height"], "gpt-4o is in view"
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            expect(picker).to_contain_text("gpt-4o (openai)")

            # A key typed into the password field goes to the session and leaves the widget.
            key_field = picker.locator("input[type='password']")
            key_field.click()
            page.keyboard.type(TYPED_KEY)
            page.keyboard.press("Enter")
            expect(picker).to_contain_text("API key applied to this session")
            expect(key_field).to_have_value("")

            # A refused value is explained in the picker and the field goes back; an accepted one is used.
            def enter(label: str, text: str) -> Any:
                field = picker.locator(".widget-text", has_text=label).locator("input")
                field.click()
                page.keyboard.press("Control+a")
                page.keyboard.type(text)
                page.keyboard.press("Enter")
                return field

            temperature = enter("Temperature", "7")
            expect(picker).to_contain_text("temperature must be a number from 0 to 2 (got '7'); the old value stays.")
            expect(temperature).to_have_value("")
            enter("Temperature", "0.2")
            expect(picker).not_to_contain_text("temperature must be")
            expect(enter("Budget (USD)", "0.50")).to_have_value("0.5")
            expect(picker).to_contain_text("of $0.50 budget")

            run_cell(page, 2)
            wait_for_prompt_number(page, 2)
            assert f"[gpt-4o] {PROMPT}" in outputs_text(page, 2)
            expect(picker).to_contain_text("Session spend: 1 call")
            picker.screenshot(path=str(ARTIFACTS / "picker.png"))

            page.keyboard.press("Control+s")
            expect(page.locator(".jp-mod-dirty")).to_have_count(0)
            page.wait_for_timeout(500)
        except BaseException:
            # What the browser showed and what the server said, to see why.
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
            print(f"JupyterLab's log:\n{lab.log.read_text()[-5000:]}")
            raise
        finally:
            browser.close()

    chat = [r for r in stub.requests if r.path.endswith("/chat/completions")]
    assert [(r.body["model"], r.body.get("temperature")) for r in chat] == [("gpt-4o", 0.2)]
    assert chat[0].headers["authorization"] == f"Bearer {TYPED_KEY}", "the typed key reached the provider"
    saved = notebook.read_text()
    assert f"[gpt-4o] {PROMPT}" in saved
    assert "application/vnd.jupyter.widget-state+json" in saved, "widget state was saved with the notebook"
    assert "ipyllm-picker" in saved
    assert SECRET not in saved and TYPED_KEY not in saved
    shutil.copy(notebook, ARTIFACTS / "picker.ipynb")
    print(f"browser test took {time.perf_counter() - started:.1f} s")
