"""The extension in a real ``jupyter server`` process, enabled the way an install enables it: by
``jupyter-config/server-config/ipyllm.json`` in a ``jupyter_server_config.d`` folder. Raw HTTP from outside: no
token, no answer; every endpoint answers with it; and serving them never imported litellm in that process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import ipyllm
from ipyllm._usage import UsageRow

from ..conftest import SECRET
from ..helpers import ROOT, free_port, wait_for
from .conftest import write_rows

TOKEN = "test-token-" + "5" * 16


def server_environment(tmp_path: Path, ledger: Path) -> dict[str, str]:
    """A Jupyter configuration folder holding the package's own enabling JSON (and the test probe's), the ledger."""
    config = tmp_path / "jupyter-config"
    enabled = config / "jupyter_server_config.d"
    enabled.mkdir(parents=True)
    shutil.copy(ROOT / "jupyter-config" / "server-config" / "ipyllm.json", enabled / "ipyllm.json")
    (enabled / "probe.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": {"tests.server.probe": True}}}))
    environ = dict(os.environ)
    environ.update(
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        PYTHONPATH=str(ROOT),
        LLM_USAGE_DB=str(ledger),
        LLM_API_KEY=SECRET,
        LLM_USER="ada",
    )
    return environ


def fetch(url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``jupyter server`` on a free port, its ledger holding three rows; the base URL."""
    ledger = tmp_path / "ledger.sqlite"
    now = datetime.now(timezone.utc)
    write_rows(str(ledger), [UsageRow(timestamp=now, session="s", model="gpt-4o-mini", cost_usd=0.01, user="ada") for _ in range(3)])
    port = free_port()
    command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", f"--port={port}",
               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}"]  # fmt: skip
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, env=server_environment(tmp_path, ledger), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or (_listening(port) and fetch(f"{base}/api/status")[0] == 200), timeout=60)
        assert process.poll() is None and _listening(port), f"jupyter server did not start: {(tmp_path / 'server.log').read_text()[-3000:]}"
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_running_server_answers_with_the_token_only_and_never_imports_litellm(server: str) -> None:
    answers: dict[str, Any] = {}
    for endpoint in ("summary", "usage?by=model", "calls?limit=2"):
        status, body = fetch(f"{server}/ipyllm/api/{endpoint}")
        assert status == 200, body
        answers[endpoint] = json.loads(body)
        assert SECRET.encode() not in body
        for token in (None, "wrong"):
            refused, body = fetch(f"{server}/ipyllm/api/{endpoint}", token=token)
            assert refused == 403 and b"gpt-4o-mini" not in body
        assert fetch(f"{server}/ipyllm/api/{endpoint}{'&' if '?' in endpoint else '?'}token={TOKEN}", token=None)[0] == 200
    assert answers["summary"]["today"]["calls"] == 3 and answers["summary"]["ledger"] == "sqlite"
    assert answers["usage?by=model"]["rows"][0]["key"] == "gpt-4o-mini"
    assert len(answers["calls?limit=2"]["calls"]) == 2
    status, body = fetch(f"{server}/ipyllm-test/modules")
    modules = json.loads(body)["modules"]
    assert status == 200 and "ipyllm._server" in modules and "ipyllm._views" in modules
    assert not [name for name in modules if name == "litellm" or name.startswith("litellm.")], "the server imported litellm"


def test_install_json_enables_the_extension_and_it_validates(tmp_path: Path) -> None:
    environ = server_environment(tmp_path, tmp_path / "ledger.sqlite")
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter_server", "extension", "list"], env=environ, capture_output=True, text=True, timeout=120
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # no colours
    assert re.search(r"^\s*ipyllm enabled$", text, re.MULTILINE), text
    assert re.search(rf"^\s*ipyllm {re.escape(ipyllm.__version__)}\s+OK$", text, re.MULTILINE), text


def test_import_ipyllm_does_not_import_the_server() -> None:
    code = "import sys, ipyllm; print([m for m in ('jupyter_server', 'ipyllm._server') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert out.stdout.strip() == "[]"
    points = subprocess.run(
        [sys.executable, "-c", "import ipyllm; print(ipyllm._jupyter_server_extension_points())"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert "'module': 'ipyllm._server'" in points.stdout and "IPyLLM" in points.stdout
