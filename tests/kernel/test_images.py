"""Figures in prompts in a real Jupyter kernel: a notebook executed by nbclient against the stub server, read back as
saved. ``{fig}``, ``{_}``, ``{Out[n]}`` and ``--image`` send the figure as an image; the footer says ``1 image``; the
dry run counts it; neither the saved notebook's ipyllm outputs nor the ledger hold image bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import execute_notebook, new_notebook, text_of

pytestmark = pytest.mark.kernel

PNG_BASE64 = "iVBORw0KGgo"

CELLS = [
    "%load_ext ipyllm",
    "from matplotlib.figure import Figure\nfig = Figure(figsize=(4, 3), dpi=100)\nfig.add_subplot().bar(['a', 'b'], [3, 5])",
    "%%llm --no-stream\nWhich bar is taller in {fig}?",
    "fig",  # Out[4]: the figure, displayed
    "%%llm --no-stream\nDescribe {_}",
    "%%llm --no-stream -f text\nAnd {Out[4]} again",
    "%%llm --no-stream --image fig\nCompare with the first",
    "%%llm --dry-run -m gpt-4o\nWhat does {fig} show?",
    "%%llm -m gpt-3.5-turbo\nWhat does {fig} show?",
]


def test_figures_in_prompts_in_a_kernel(stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "kernel-usage.sqlite"
    monkeypatch.setenv("LLM_USAGE_DB", str(ledger))
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    nb = execute_notebook(new_notebook(CELLS), tmp_path)
    outputs = ["\n".join(text_of(o) for o in cell.outputs) for cell in nb.cells]
    for number in (2, 4, 5):
        assert "[image 400×300]" in outputs[number] and "1 image" in outputs[number], outputs[number]
    assert "[image 400×300]" in outputs[6]
    assert "[image 400×300]" in outputs[7] and "1 image" in outputs[7] and "nothing sent" in outputs[7]
    assert "gpt-3.5-turbo does not take images" in outputs[8] and len(outputs[8].strip().splitlines()) == 1
    assert len(stub.requests) == 4  # the dry run and the refused call sent nothing
    ours = [cell for cell in nb.cells if cell.source.startswith("%%llm")]
    assert all(PNG_BASE64 not in str(cell.outputs) and "data:image" not in str(cell.outputs) for cell in ours)
    with sqlite3.connect(ledger) as connection:
        assert connection.execute("SELECT images FROM usage ORDER BY timestamp_us").fetchall() == [(1,)] * 4
    assert PNG_BASE64.encode() not in ledger.read_bytes()
