"""The first call in a new kernel: a passing note while litellm imports, and a cache hit that never waits.

``%load_ext ipyllm`` starts litellm's import (seconds) in a background thread. A ``%%llm`` cell run at once
must say so in the cell until the reply replaces the note, and the import wait is no part of the row's
``latency_s``. A cache hit needs no litellm at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

import ipyllm
from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import new_notebook

NOTE = "⏳ loading litellm (first call in this kernel)…"


class RecordingClient(NotebookClient):
    """nbclient, keeping every iopub message of each cell (the notes that a saved notebook no longer shows)."""

    def __init__(self, nb: nbformat.NotebookNode, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.seen: dict[int, list[dict[str, Any]]] = {}

    def process_message(self, msg: dict[str, Any], cell: nbformat.NotebookNode, cell_index: int) -> Any:
        self.seen.setdefault(cell_index, []).append(msg)
        return super().process_message(msg, cell, cell_index)

    def shown(self, cell_index: int) -> list[str]:
        """Every text the cell displayed, notes and updates included, in order."""
        messages = self.seen.get(cell_index, [])
        return [m["content"]["data"].get("text/plain", "") for m in messages if m["msg_type"] in ("display_data", "update_display_data")]


def duration(cell: nbformat.NotebookNode) -> float:
    timing = cell.metadata["execution"]
    start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def environment(stub: StubServer, ledger: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LLM_MODEL")}
    env.update(LLM_BASE_URL=stub.base_url, LLM_API_KEY=SECRET, LLM_USAGE_DB=str(ledger), LLM_CACHE="1")
    return env


@pytest.mark.kernel
def test_the_first_call_says_litellm_is_loading_and_a_cache_hit_does_not_wait(
    live: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "usage.sqlite"
    # A reply cached beforehand (this process, same settings), for the kernel's first cell to hit.
    ipyllm.config.update(usage_db=str(ledger), cache=True)
    ipyllm.complete("Cached before the kernel started")
    for name, value in environment(live, ledger).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sent_before = len(live.requests)

    cells = [
        "%load_ext ipyllm",
        "%%llm\nCached before the kernel started",
        "%%llm\nHello while litellm loads",
        "%%llm\nHello again",
        "import ipyllm, sys\nprint(ipyllm.usage()[['status', 'latency_s']].to_json(orient='records'))",
    ]
    nb = new_notebook(cells)
    client = RecordingClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    saved = nbformat.writes(nb)
    rows = json.loads(nb.cells[4].outputs[0]["text"])
    print("cell durations:", [round(duration(c), 2) for c in nb.cells[1:4]], "rows:", rows)

    # The cache hit: answered at once, no note, no request, though litellm was still importing.
    assert rows[0]["status"] == "cached"
    assert NOTE not in client.shown(1)
    assert client.shown(1)[-1].startswith("[gpt-4o-mini] Cached before the kernel started")
    assert rows[0]["latency_s"] < 0.5

    # The first sent call: the note first, then the reply in its place.
    shown = client.shown(2)
    assert shown[0] == NOTE, shown
    assert shown[-1].startswith("[gpt-4o-mini] Hello while litellm loads") and "gpt-4o-mini · " in shown[-1]
    waited = duration(nb.cells[2])
    assert waited > 1.0, "the cell waited for litellm's import (else this test proves nothing)"
    assert rows[1]["status"] == "ok" and rows[1]["latency_s"] < waited / 2, "the import wait is not the call's latency"
    # Later calls: no note.
    assert NOTE not in client.shown(3)

    # The saved notebook: each reply once, no note left.
    assert "loading litellm" not in saved and "⏳" not in saved
    for index in (1, 2, 3):
        visible = [o for o in nb.cells[index].outputs if o.get("data", {}).get("text/plain", "").strip()]
        assert len(visible) == 1, nb.cells[index].outputs
    assert len(live.requests) == sent_before + 2
    # Priming litellm (a mock completion in the warm-up thread) says nothing in any cell.
    assert not [o for cell in nb.cells[:4] for o in cell.outputs if o["output_type"] == "stream"]


def test_a_cache_hit_in_a_fresh_process_never_imports_litellm(live: StubServer, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite"
    ipyllm.config.update(usage_db=str(ledger), cache=True)
    ipyllm.complete("Remember this")
    ipyllm.embed(["and this"])
    sent = len(live.requests)
    script = (
        "import json, sys, ipyllm\n"
        "reply = ipyllm.complete('Remember this')\n"
        "vectors = ipyllm.embed(['and this'])\n"
        "rows = [reply.usage, vectors.usage]\n"
        "print(json.dumps({'text': str(reply), 'litellm': 'litellm' in sys.modules,\n"
        "    'rows': [[r.status, r.provider, r.prompt_tokens, r.latency_s] for r in rows]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=environment(live, ledger), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] == "[gpt-4o-mini] Remember this"
    assert result["litellm"] is False, "a cache hit needs no litellm"
    (chat_status, chat_provider, chat_tokens, chat_latency), (embed_status, embed_provider, _, embed_latency) = result["rows"]
    assert (chat_status, chat_provider, embed_status, embed_provider) == ("cached", "openai", "cached", "openai")
    assert chat_tokens > 0
    assert chat_latency < 0.5 and embed_latency < 0.5
    assert len(live.requests) == sent
