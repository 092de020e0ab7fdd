"""``pip install .`` from a fresh copy of the repository gives a JupyterLab with ipyllm's prebuilt extension and its
server extension enabled and OK: the wheel builds the TypeScript with npm (nothing built is committed) and ships
it as shared data, with the server config in ``etc/jupyter/jupyter_server_config.d``.

It installs into a fresh virtual environment (a few minutes), so it runs when ``IPYLLM_INSTALL_CHECKS=1`` (``.ci/run``
sets it), as the other install checks (tests/notebooks/test_notebooks.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from ..notebooks.test_notebooks import copy_of_the_repository, fresh_python, install_check

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@install_check
def test_pip_install_gives_jupyterlab_with_the_extensions_enabled_and_ok(tmp_path: Path) -> None:
    copy = copy_of_the_repository(tmp_path / "ipyllm")
    assert not (copy / "ipyllm" / "labextension").exists() and not (copy / "node_modules").exists(), "a fresh copy has nothing built"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and not k.startswith("JUPYTER")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
    )
    subprocess.run([fresh_python(), "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", ".", "jupyterlab>=4"], cwd=copy, env=env, check=True)
    installed = time.perf_counter() - started

    shared = venv / "share" / "jupyter" / "labextensions" / "ipyllm"
    assert json.loads((shared / "package.json").read_text())["name"] == "ipyllm"
    assert json.loads((shared / "install.json").read_text())["packageName"] == "ipyllm"
    assert (shared / "static" / "style.js").is_file() and (shared / "schemas" / "ipyllm" / "plugin.json").is_file()
    config = venv / "etc" / "jupyter" / "jupyter_server_config.d" / "ipyllm.json"
    assert json.loads(config.read_text()) == {"ServerApp": {"jpserver_extensions": {"ipyllm": True}}}
    site = next((venv / "lib").glob("python3*/site-packages/ipyllm"))
    assert (site / "py.typed").is_file()
    assert not (site / "labextension").exists(), "the built extension is shared data, not package data"

    def jupyter(*args: str) -> str:
        done = subprocess.run([str(venv / "bin" / "jupyter"), *args], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
        return ANSI.sub("", done.stdout + done.stderr)

    labextensions = jupyter("labextension", "list")
    assert re.search(r"ipyllm v0\.1\.0 enabled\s+OK \(python, ipyllm\)", labextensions), labextensions
    servers = jupyter("server", "extension", "list")
    assert re.search(r"^\s*ipyllm enabled\s*$", servers, re.M), servers
    assert re.search(r"^\s*ipyllm( \S+)?\s+OK\s*$", servers, re.M), servers
    print(f"pip install . with the extension build: {installed:.0f} s")
