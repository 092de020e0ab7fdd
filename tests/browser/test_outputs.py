"""What JupyterLab itself keeps in a saved notebook: no empty output from line magics, failed or retried calls.

The same JupyterLab, kernel and headless Chromium as the picker's test (``tests/browser/conftest.py``);
the cells run with Shift+Enter and the notebook is saved with Ctrl+S, so the file is JupyterLab's own.
"""

from __future__ import annotations

import json
from typing import Any

import nbformat
import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from .conftest import Lab, notebook_page, run_cell, wait_for_prompt_number

pytestmark = pytest.mark.browser

SCRIPT = "script_remote(os.environ['LLM_BASE_URL'], {faults})"
CELLS = [
    "%load_ext ipyllm\nimport os\nfrom ipyllm.testing import script_remote",
    "%llm_config retry_min_wait=0.05 retry_max_wait=0.3 num_retries=1",
    "answer = %llm What is the answer?",
    SCRIPT.format(faults="'503', '503'"),
    "%%llm\nThis fails after a retry",
    SCRIPT.format(faults="'503'"),
    "retried = %llm Retried once",
    SCRIPT.format(faults="'503'"),
    "print('computed before')\nalso = %llm Retried among other code",
    "from ipyllm import _magics\nprint('cell id sent:', bool(_magics._loaded[id(get_ipython())].cell_id))",
]


def test_jupyterlab_saves_no_empty_output(lab: Lab, stub: StubServer) -> None:
    from playwright.sync_api import expect

    notebook = lab.root / "outputs.ipynb"
    with notebook_page(lab, "outputs.ipynb", CELLS, failure_shot="browser-outputs-failure.png") as page:
        for index in range(len(CELLS)):
            run_cell(page, index)
            wait_for_prompt_number(page, index)
        page.keyboard.press("Control+s")
        expect(page.locator(".jp-mod-dirty")).to_have_count(0)
        page.wait_for_timeout(500)

    saved = nbformat.read(notebook, as_version=4)
    outputs: list[list[dict[str, Any]]] = [cell.outputs for cell in saved.cells]
    for index, cell_outputs in enumerate(outputs):
        for output in cell_outputs:
            shown = output.get("text") or "".join(str(v) for v in output.get("data", {}).values()) or output.get("ename")
            assert shown and str(shown).strip(), (index, output)
    assert outputs[2] == [] and outputs[6] == [], "assigned line magics leave nothing, even after a retry"
    assert [o["output_type"] for o in outputs[4]] == ["error"], "a failed cell keeps only its error"
    assert [o["output_type"] for o in outputs[8]] == ["stream", "display_data"]
    assert outputs[8][0]["text"] == "computed before\n" and outputs[8][1]["data"]["text/plain"] == "answered after 2 attempts"
    assert outputs[9][0]["text"] == "cell id sent: True\n", "JupyterLab sends cell ids"
    text = json.dumps(saved)
    assert "⏳" not in text and SECRET not in text
