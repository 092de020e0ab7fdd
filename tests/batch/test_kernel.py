"""``%%llm --map`` and the batch progress widget in a real Jupyter kernel (nbclient), against the stub server.

The assertions read the executed notebook as it would be saved: the preview, the one-line summary that
took the progress bar's place, one-line errors, and the widget's last state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import execute_notebook, new_notebook, reply_to, start_kernel, stop_kernel

pytestmark = pytest.mark.kernel

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

CELLS = [
    "%load_ext ipyllm",
    (
        "import ipyllm, pandas as pd\n"
        "from typing import Literal\n"
        "from pydantic import BaseModel\n"
        "class Review(BaseModel):\n"
        "    sentiment: Literal['positive', 'negative']\n"
        "    product: str\n"
        "df = pd.DataFrame({'text': ['product: kettle, positive', 'product: fan, negative', 'product: lamp, positive']},"
        " index=['k', 'f', 'l'])"
    ),
    "%%llm --map df -o replies --concurrency 2\nClassify: {text}",
    "print(replies.tolist(), replies.index.tolist())",
    "%%llm --map df --schema Review -o fields\nExtract: {text}",
    "print(fields.to_dict('index'))",
    "numbers = ipyllm.map('count {value}', [str(i) for i in range(12)], concurrency=3)",
    "%%llm --map nowhere\n{text}",
    "%%llm --map df\n{missing}",
    "%llm --map df hello",
    "%%llm --map df --dry-run\nClassify: {text}",
    "frame = ipyllm.usage()\nprint(sorted(frame.groupby('batch').size().tolist()), sorted(set(frame['source'])))",
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nbformat.NotebookNode, StubServer]]:
    monkeypatch = pytest.MonkeyPatch()
    with StubServer() as stub:
        monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
        monkeypatch.setenv("LLM_API_KEY", SECRET)
        monkeypatch.setenv("LLM_USAGE_DB", str(tmp_path_factory.mktemp("ledger") / "usage.sqlite"))
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        nb = execute_notebook(new_notebook(CELLS), tmp_path_factory.mktemp("work"), store_widget_state=True)
        yield nb, stub
    monkeypatch.undo()


def texts(nb: nbformat.NotebookNode, index: int, mime: str = "text/plain") -> list[str]:
    found = []
    for output in nb.cells[index].outputs:
        if output["output_type"] == "stream":
            found.append(output["text"])
        elif mime in output.get("data", {}):
            found.append(output["data"][mime])
    return found


def test_map_magic_shows_a_preview_and_stores_the_replies(executed: tuple[nbformat.NotebookNode, StubServer]) -> None:
    nb, _ = executed
    printed = texts(nb, 3)[0]
    assert printed.strip() == (
        "['[gpt-4o-mini] Classify: product: kettle, positive', '[gpt-4o-mini] Classify: product: fan, negative', "
        "'[gpt-4o-mini] Classify: product: lamp, positive'] ['k', 'f', 'l']"
    )
    preview = texts(nb, 2, "text/html")
    assert len(preview) == 1 and "kettle" in preview[0] and "[gpt-4o-mini] Classify" in preview[0]


def test_map_magic_with_a_schema_stores_columns(executed: tuple[nbformat.NotebookNode, StubServer]) -> None:
    nb, stub = executed
    assert texts(nb, 5)[0].strip() == (
        "{'k': {'sentiment': 'positive', 'product': 'kettle'}, 'f': {'sentiment': 'negative', 'product': 'fan'}, "
        "'l': {'sentiment': 'positive', 'product': 'lamp'}}"
    )
    assert any(r.body.get("response_format", {}).get("type") == "json_schema" for r in stub.requests)


def test_the_progress_bar_gives_way_to_a_summary_line_that_stays(executed: tuple[nbformat.NotebookNode, StubServer]) -> None:
    nb, _ = executed
    for index in (2, 4, 6):
        outputs = nb.cells[index].outputs
        assert not any(WIDGET_VIEW in o.get("data", {}) for o in outputs), "the bar is replaced in the saved notebook"
        summaries = [t for t in texts(nb, index) if t.startswith("ipyllm.map batch ")]
        assert len(summaries) == 1, texts(nb, index)
    assert " 12 rows, 12 answered · $" in texts(nb, 6)[0]
    # The widget was there while the batch ran: its last state says 12 of 12.
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert any(bar["value"] == 12 and bar["max"] == 12 for bar in bars)


def test_map_magic_errors_are_one_line(executed: tuple[nbformat.NotebookNode, StubServer]) -> None:
    nb, _ = executed
    for index, expected in (
        (7, "UsageError: --map nowhere: no variable 'nowhere' in the namespace; define it first"),
        (8, "UsageError: the template names {missing}, which the data does not have (its fields: text)"),
        (9, "UsageError: --map takes its template from the cell body"),
    ):
        (shown,) = texts(nb, index)
        assert shown.strip().startswith(expected) and len(shown.strip().splitlines()) == 1, shown
    assert texts(nb, 10)[0].startswith("dry run, nothing sent · 3 rows · gpt-4o-mini")


def test_map_rows_carry_their_batch(executed: tuple[nbformat.NotebookNode, StubServer]) -> None:
    nb, _ = executed
    assert texts(nb, 11)[0].strip() == "[3, 3, 12] ['map']"


def test_interrupting_the_kernel_during_a_map_stops_it_and_keeps_the_partial_result(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stub.delay = 0.5
    monkeypatch.setenv("LLM_BASE_URL", stub.base_url)
    monkeypatch.setenv("LLM_API_KEY", SECRET)
    monkeypatch.setenv("LLM_USAGE_DB", str(tmp_path / "usage.sqlite"))
    manager, client = start_kernel(tmp_path)
    try:
        assert client.execute("import ipyllm; ipyllm.warm_up().join()", reply=True, timeout=60)["content"]["status"] == "ok"
        msg_id = client.execute("result = ipyllm.map('{value}', [str(i) for i in range(200)], concurrency=4, progress=False)")
        deadline = time.monotonic() + 30
        while len(stub.requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        interrupted_at = time.monotonic()
        manager.interrupt_kernel()
        reply = reply_to(client, msg_id, timeout=30)
        assert time.monotonic() - interrupted_at < 1.5, "stops within a second (and a little for the messages)"
        assert reply["content"]["ename"] == "BatchInterrupted"
        assert len(reply["content"]["traceback"]) == 1 and "run the same map again to resume" in reply["content"]["traceback"][0]
        sent = len(stub.requests)
        time.sleep(1.0)
        assert len(stub.requests) == sent, "nothing is sent after the interrupt"
        check = client.execute(
            "import ipyllm",
            user_expressions={
                "answered": "int(ipyllm.last_batch().result.notna().sum())",
                "interrupted": "int((ipyllm.usage()['status'] == 'interrupted').sum())",
            },
            reply=True,
            timeout=60,
        )
        found = {name: int(value["data"]["text/plain"]) for name, value in check["content"]["user_expressions"].items()}
        assert 0 < found["answered"] < 200 and 1 <= found["interrupted"] <= 4
    finally:
        stop_kernel(manager, client)
