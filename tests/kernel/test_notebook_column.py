"""The notebook a row came from: a real kernel, run by nbclient with ``JPY_SESSION_NAME`` in its environment (as
Jupyter Server starts a notebook's kernel), records it in the ledger and groups by it in ``%llm_usage``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import execute_notebook, new_notebook, text_of


def test_a_kernel_records_the_notebook_jupyter_names(stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("LLM_USAGE_DB", str(path))
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("JPY_SESSION_NAME", "work/analysis.ipynb")  # the notebook's path under the server's root
    nb = execute_notebook(new_notebook(["%load_ext ipyllm", "%llm say hello", "%llm_usage --by notebook"]), tmp_path, allow_errors=False)
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT notebook, status FROM usage").fetchall()
    assert rows == [("work/analysis.ipynb", "ok")]
    table = "".join(text_of(output) for output in nb.cells[2].outputs)
    assert "work/analysis.ipynb" in table and "total" in table


def test_a_kernel_outside_jupyter_records_no_notebook(stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("LLM_USAGE_DB", str(path))
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    execute_notebook(new_notebook(["import ipyllm", "ipyllm.complete('hi')"]), tmp_path, allow_errors=False)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT notebook FROM usage").fetchall() == [(None,)]
