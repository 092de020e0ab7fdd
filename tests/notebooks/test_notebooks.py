"""The notebooks: committed without outputs, executed in a fresh kernel against the stub server, installable on binder.

Each notebook runs with nbclient in a real ``python3`` kernel, in a temporary working directory, with its own
Jupyter data directory and usage ledger, and with no provider settings in the environment: so its first
output must say that replies come from the local stub server, and no cell may fail except those tagged
``raises-exception`` (which must fail, in one line).

The install checks (binder's requirements into a fresh virtual environment, ``./run-quickstart`` in a fresh
copy of the repository) take a minute or two each; they run when ``IPYLLM_INSTALL_CHECKS=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..helpers import ROOT, execute_notebook, text_of

NOTEBOOKS = {path.stem: path for path in sorted((ROOT / "notebooks").glob("*.ipynb"))}
INSTALL_CHECKS = os.environ.get("IPYLLM_INSTALL_CHECKS") == "1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A stray font-cache notice from a fresh matplotlib is not the notebook's doing.
_HARMLESS_STDERR = ("Matplotlib is building the font cache",)


def offline_environment(base: dict[str, str], data_dir: Path, usage_db: Path | None = None) -> dict[str, str]:
    """``base`` without any provider setting or key, with its own Jupyter data directory (and ledger)."""
    env = {k: v for k, v in base.items() if not (k.startswith("LLM_") or k.endswith(("_API_KEY", "_API_BASE", "_BASE_URL")))}
    env["JUPYTER_DATA_DIR"] = str(data_dir)
    if usage_db is not None:
        env["LLM_USAGE_DB"] = str(usage_db)
    return env


def all_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(text_of(o) for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


def check_executed(nb: nbformat.NotebookNode, first_says: str = "stub server") -> None:
    """What every executed notebook must show: where replies come from, first; only the expected errors, each in one line."""
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    first = next(o for cell in code_cells for o in cell.outputs)
    assert first["output_type"] == "stream" and first_says in first["text"], first
    for cell in code_cells:
        errors = [o for o in cell.outputs if o["output_type"] == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            assert len(errors) == 1, (cell.source, "should fail")
            lines = [line for line in text_of(errors[0]).splitlines() if line.strip()]
            assert len(lines) == 1, (cell.source, lines)
        else:
            assert errors == [], (cell.source, [text_of(e) for e in errors])
        # A cell tagged "prints-note" may say one thing of ipyllm's in one line (a reply a budget's cap cut short).
        harmless = (*_HARMLESS_STDERR, "ipyllm: ") if "prints-note" in cell.metadata.get("tags", []) else _HARMLESS_STDERR
        noise = [o for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stderr" and not o["text"].startswith(harmless)]
        assert noise == [], (cell.source, noise)
        notes = [line for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stderr" for line in o["text"].splitlines()]
        assert len([line for line in notes if line.startswith("ipyllm: ")]) <= 1, (cell.source, notes)


# -- the committed notebooks ---------------------------------------------------------------------------


def test_the_notebooks_are_there() -> None:
    assert set(NOTEBOOKS) == {"quickstart", "cost-analysis", "retries", "batch", "images"}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_are_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata, "saved widget state: strip it"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip the outputs of {cell.source[:40]!r}"
        assert set(cell.metadata) <= {"tags"}, f"{name}: stray cell metadata {dict(cell.metadata)}"


# -- executed in a fresh kernel -------------------------------------------------------------------------


def run_notebook(path: Path, work: Path, **environment: str) -> nbformat.NotebookNode:
    """Execute ``path`` in a fresh ``python3`` kernel started in ``work``, with no provider settings but ``environment``."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(offline_environment(saved, work / "jupyter-data", work / "usage.sqlite"), **environment)
        nb = nbformat.read(path, as_version=4)
        execute_notebook(nb, work, allow_errors=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(nb, work / path.name)
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, nbformat.NotebookNode]:
    """Every notebook run once, offline, in its own kernel, working directory, Jupyter data directory and ledger."""
    return {name: run_notebook(path, tmp_path_factory.mktemp(name)) for name, path in NOTEBOOKS.items()}


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_run_offline_without_errors(executed: dict[str, nbformat.NotebookNode], name: str) -> None:
    check_executed(executed[name])


def outputs_of(nb: nbformat.NotebookNode, source_start: str, exact: bool = False) -> list[dict[str, Any]]:
    """The outputs of the one code cell whose source starts with ``source_start`` (or is it, with ``exact``)."""
    cells = [
        cell
        for cell in nb.cells
        if cell.cell_type == "code" and (cell.source == source_start.strip() if exact else cell.source.startswith(source_start))
    ]
    assert len(cells) == 1, source_start
    return list(cells[0].outputs)


@pytest.mark.kernel
def test_quickstart_shows_replies_formats_the_picker_and_usage(executed: dict[str, nbformat.NotebookNode]) -> None:
    nb = executed["quickstart"]
    reply = text_of(outputs_of(nb, "%%llm\nList three things")[0])
    assert reply.startswith("[gpt-4o-mini] List three things") and "gpt-4o-mini · " in reply and "· 1 attempt" in reply
    assert "```\n[gpt-4o-mini] Write a Python function" in text_of(outputs_of(nb, "%%llm -f code")[0])
    assert "text/html" in outputs_of(nb, "%%llm -f html")[0]["data"]
    assert set(outputs_of(nb, "%%llm -f text")[0]["data"]) == {"text/plain"}
    assert "application/vnd.jupyter.widget-view+json" in outputs_of(nb, "ipyllm.picker()")[0]["data"]
    assert re.search(r"\d+→\d+ tokens, \$0\.\d+, 1 attempt", text_of(outputs_of(nb, "print(slogan.upper())")[0]))
    table = text_of(outputs_of(nb, "%%llm\nSummarise these {topic}")[0])
    assert "DataFrame, 4 rows × 3 columns" in table and "\n0,north,120,131\n" in table, "{sales} is sent as a CSV table"
    dry_run = text_of(outputs_of(nb, "%%llm --chat --dry-run")[0])
    assert "dry run, nothing sent" in dry_run and "My name is Ada and I analyse sales data." in dry_run
    assert "total" in text_of(outputs_of(nb, "%llm_usage", exact=True)[0])


@pytest.mark.kernel
def test_retries_show_attempts_notes_and_one_line_failures(executed: dict[str, nbformat.NotebookNode]) -> None:
    nb = executed["retries"]
    assert "· 2 attempts" in text_of(outputs_of(nb, "%%llm\nExplain in one sentence what HTTP 429")[0])
    capped = re.search(r"· ([\d.]+) s · 2 attempts", text_of(outputs_of(nb, "%%llm\nExplain in one sentence what Retry-After")[0]))
    assert capped is not None and 1.5 < float(capped[1]) < 10, "a Retry-After of 30 s is capped at retry_max_wait (2 s)"
    notes = "".join(text_of(o) for o in outputs_of(nb, "stub.script(Fault.rate_limit(retry_after=1), Fault"))
    assert "rate limited (429), attempt 2/6 in 1.0 s" in notes and "3 attempts" in notes
    outage = "".join(text_of(o) for o in outputs_of(nb, "stub.script(Fault.status(503), Fault.status(503), Fault.drop())"))
    assert "server error (503), attempt 2/6" in outage and "connection error, attempt 4/6" in outage and "4 attempts" in outage
    waits = "".join(text_of(o) for o in outputs_of(nb, "for low, high in"))
    assert "retry_min_wait=1    retry_max_wait=1    waits: 1.00 s, 1.00 s" in waits
    assert "· 2 attempts" in text_of(outputs_of(nb, "%%llm\nTake your time.")[0]), "timed out once, then answered"
    exhausted = outputs_of(nb, "%%llm\nIs anyone there?")[-1]
    assert re.match(r"ProviderUnavailableError: http://127\.0\.0\.1:\d+/v1 failed with 503 after 2 attempts", text_of(exhausted))
    broken = outputs_of(nb, "%%llm\nCount slowly")
    assert "the reply broke off here" in text_of(broken[0]) and text_of(broken[-1]).startswith("StreamBrokenError: ")
    assert "⏳" not in all_text(nb), "retry notes are replaced by the reply"


@pytest.mark.kernel
def test_cost_analysis_refuses_over_budget_and_plots(executed: dict[str, nbformat.NotebookNode]) -> None:
    nb = executed["cost-analysis"]
    # An essay under six hundredths of a cent: sent with the cap the budget pays for, cut there, and said so.
    essay = outputs_of(nb, "%%llm --max-tokens 20000")
    shown = [text_of(o) for o in essay if o["output_type"] != "stream"]
    assert shown and re.search(r"· cut at [\d,]+ tokens by budget_usd</sub>$", shown[-1]), [s[-300:] for s in shown]
    assert any(text_of(o).startswith("ipyllm: the reply was cut at ") for o in essay if o["output_type"] == "stream")
    refused = text_of(outputs_of(nb, "%llm One more question?")[-1])
    assert refused.startswith("BudgetExceededError: budget: spent $") and "raise budget_usd to go on" in refused
    assert "this call needs at least $" in refused
    assert "refused: budget: spent" in text_of(outputs_of(nb, "ipyllm.config.update(budget_usd=None")[0])
    assert any("image/png" in o.get("data", {}) for o in outputs_of(nb, "%llm_usage --all --plot"))
    for start in ("day = ", "sent = ", "percentiles = ", "frame.nlargest"):
        assert "text/html" in outputs_of(nb, start)[-1]["data"], start
    table = text_of(outputs_of(nb, "%llm_usage --all\n", exact=True)[0])
    assert "gpt-4o " in table and "gpt-4o-mini" in table and "total" in table


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("name", "first_says"),
    [
        ("quickstart", "calls go to the server at"),
        ("cost-analysis", "calls go to the server at"),
        ("retries", "stub server"),
        ("images", "calls go to the server at"),
    ],
)
def test_notebooks_run_unchanged_with_a_configured_provider(stub: StubServer, tmp_path: Path, name: str, first_says: str) -> None:
    """A provider configured the way users do (LLM_BASE_URL, LLM_API_KEY), played by a stub server outside the kernel."""
    nb = run_notebook(NOTEBOOKS[name], tmp_path, LLM_BASE_URL=stub.base_url, LLM_API_KEY=SECRET)
    check_executed(nb, first_says)
    saved = (tmp_path / NOTEBOOKS[name].name).read_text()
    assert SECRET not in saved and SECRET[-8:] not in saved
    if name == "retries":
        assert stub.requests == [], "the retries notebook scripts faults, so it uses a stub server of its own"
    else:
        assert stub.requests and all(r.headers["authorization"] == f"Bearer {SECRET}" for r in stub.requests)


# -- installs from scratch: binder's requirements, ./run-quickstart --------------------------------------

install_check = pytest.mark.skipif(
    not INSTALL_CHECKS, reason="installs into a fresh virtual environment: set IPYLLM_INSTALL_CHECKS=1 (CI does)"
)


def fresh_python() -> str:
    return shutil.which("python3") or sys.executable


def copy_of_the_repository(into: Path) -> Path:
    """The repository's files (those git tracks or would track) copied to ``into``: what a fresh clone holds."""
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], cwd=into.parent, capture_output=True, text=True, check=True
    )
    for name in files.stdout.splitlines():
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


@install_check
def test_binder_installs_jupyterlab_with_ipyllm_and_runs_every_notebook(tmp_path: Path) -> None:
    """What repo2docker does with binder/, in a fresh virtual environment; then every notebook, executed there."""
    # repo2docker builds a clone of the repository: so does this test (an editable install writes into its source).
    copy = copy_of_the_repository(tmp_path / "ipyllm")
    assert not (copy / "ipyllm" / "labextension").exists() and not (copy / "node_modules").exists(), "a fresh copy has nothing built"
    venv = tmp_path / "venv"
    env = offline_environment(dict(os.environ), tmp_path / "jupyter-data")
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    started = time.perf_counter()
    subprocess.run([fresh_python(), "-m", "venv", str(venv)], cwd=tmp_path, check=True)
    # As repo2docker runs it: from the repository's root, so that "." is this repository.
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-r", "binder/requirements.txt"], cwd=copy, env=env, check=True)
    if (copy / "binder" / "postBuild").exists():
        subprocess.run(["bash", "binder/postBuild"], cwd=copy, env=env, check=True)
    installed = time.perf_counter() - started

    def jupyter(*args: str) -> str:
        done = subprocess.run([str(venv / "bin" / "jupyter"), *args], cwd=copy, env=env, capture_output=True, text=True, check=True)
        return done.stdout + done.stderr

    assert jupyter("lab", "--version").strip().startswith("4.")
    assert "@jupyter-widgets/jupyterlab-manager" in jupyter("labextension", "list"), "the picker needs the widgets extension"
    assert str(venv) in jupyter("kernelspec", "list")
    out = tmp_path / "executed"
    # The notebooks in the order a binder user would open them, sharing one ledger as they would.
    names = ["quickstart", "retries", "cost-analysis"]
    jupyter("nbconvert", "--to", "notebook", "--execute", "--output-dir", str(out), *(f"notebooks/{name}.ipynb" for name in names))
    for name in names:
        check_executed(nbformat.read(out / f"{name}.ipynb", as_version=4))
    executed = time.perf_counter() - started - installed
    # The same copy installed as a wheel (`pip install .`; the extension built above is not built again): JupyterLab
    # finds the prebuilt extension and the server extension in the environment, enabled and OK.
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "."], cwd=copy, env=env, check=True)
    check_jupyterlab_extensions(venv, jupyter)
    print(f"binder check: install {installed:.0f} s, notebooks {executed:.0f} s")


def check_jupyterlab_extensions(venv: Path, jupyter: Callable[..., str]) -> None:
    """ipyllm's wheel ships its JupyterLab extension as shared data and its server extension's config in
    ``etc/jupyter/jupyter_server_config.d``; ``jupyter labextension list`` and ``jupyter server extension list`` show
    both enabled and OK."""
    shared = venv / "share" / "jupyter" / "labextensions" / "ipyllm"
    assert json.loads((shared / "package.json").read_text())["name"] == "ipyllm"
    assert json.loads((shared / "install.json").read_text())["packageName"] == "ipyllm"
    assert (shared / "static" / "style.js").is_file() and (shared / "schemas" / "ipyllm" / "plugin.json").is_file()
    config = venv / "etc" / "jupyter" / "jupyter_server_config.d" / "ipyllm.json"
    assert json.loads(config.read_text()) == {"ServerApp": {"jpserver_extensions": {"ipyllm": True}}}
    site = next((venv / "lib").glob("python3*/site-packages/ipyllm"))
    assert (site / "py.typed").is_file() and not (site / "__editable__").exists()
    assert not (site / "labextension").exists(), "the built extension is shared data, not package data"
    labextensions = ANSI.sub("", jupyter("labextension", "list"))
    assert re.search(r"ipyllm v0\.1\.0 enabled\s+OK \(python, ipyllm\)", labextensions), labextensions
    servers = ANSI.sub("", jupyter("server", "extension", "list"))
    assert re.search(r"^\s*ipyllm enabled\s*$", servers, re.M), servers
    assert re.search(r"^\s*ipyllm( \S+)?\s+OK\s*$", servers, re.M), servers


@install_check
def test_run_quickstart_from_a_fresh_copy_writes_the_executed_notebook(tmp_path: Path) -> None:
    """The README's first command in a copy of the repository's files: no .venv, nothing installed by hand."""
    copy = copy_of_the_repository(tmp_path / "ipyllm")
    # The binder check above builds the JupyterLab extension from source; here the one already built is copied in,
    # so that installing does not run npm a second time (hatch-jupyter-builder skips a built extension).
    shutil.copytree(ROOT / "ipyllm" / "labextension", copy / "ipyllm" / "labextension")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), OPENAI_API_KEY="sk-must-not-be-used", LLM_MODEL="gpt-4o")
    done = subprocess.run(["./run-quickstart"], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stub server" in done.stdout and "build/quickstart.ipynb" in done.stdout
    nb = nbformat.read(copy / "build" / "quickstart.ipynb", as_version=4)
    check_executed(nb)
    assert "sk-must-not-be-used" not in (copy / "build" / "quickstart.ipynb").read_text()


@pytest.mark.kernel
def test_batch_shows_progress_schema_columns_cost_per_batch_and_a_free_rerun(executed: dict[str, nbformat.NotebookNode]) -> None:
    nb = executed["batch"]
    assert "dry run, nothing sent · 6 rows" in text_of(outputs_of(nb, 'TEMPLATE = "Classify')[0])
    classified = outputs_of(nb, "sentiment = ipyllm.map(")
    assert text_of(classified[0]).startswith("ipyllm.map batch ") and "6 rows, 6 answered" in text_of(classified[0])
    assert "r-1043" in classified[-1]["data"]["text/html"]
    extracted = outputs_of(nb, "from typing import Literal")[-1]["data"]["text/html"]
    assert "<th>product</th>" in extracted and "toaster" in extracted and "negative" in extracted
    rerun = "".join(text_of(o) for o in outputs_of(nb, "again = ipyllm.map("))
    assert "6 answered (6 from the cache)" in rerun and "same answers: True" in rerun and "cached  0.0" in rerun


@pytest.mark.kernel
def test_batch_classifies_via_the_batch_api_at_half_price_and_a_rerun_attaches(executed: dict[str, nbformat.NotebookNode]) -> None:
    nb = executed["batch"]
    batched = "".join(text_of(o) for o in outputs_of(nb, "if stub is not None:"))
    assert "ipyllm.map via provider batch batch_" in batched and "same answers as live: True" in batched
    tiers = text_of(outputs_of(nb, "usage = ipyllm.usage()\nclassified")[-1]).splitlines()
    costs = {line.split()[0]: (int(line.split()[2]), float(line.split()[3])) for line in tiers if line.startswith(("batch", "live"))}
    assert costs["batch"][0] == costs["live"][0] and costs["batch"][1] == pytest.approx(costs["live"][1] / 2, rel=0.05)
    assert "<ipyllm provider batch batch_" in text_of(outputs_of(nb, "SUMMARY = ")[-1])
    attached = "".join(text_of(o) for o in outputs_of(nb, "summaries = ipyllm.map("))
    assert "ipyllm: attached to provider batch batch_" in attached and "6 rows, 6 answered" in attached
    assert text_of(outputs_of(nb, "ipyllm.batches()")[-1]).count("collected") == 2


@pytest.mark.kernel
def test_images_notebook_sends_figures_and_keeps_no_image_bytes(executed: dict[str, nbformat.NotebookNode]) -> None:
    nb = executed["images"]
    asked = text_of(outputs_of(nb, "%%llm\nIn which month")[0])
    assert "[image 640×480]" in asked and "· 1 image ·" in asked, asked
    compared = text_of(outputs_of(nb, "%%llm --image chart_a --image chart_b")[0])
    assert compared.count("[image 400×300]") == 2 and "· 2 images ·" in compared, compared
    dry_run = text_of(outputs_of(nb, "%%llm --dry-run -m gpt-4o")[0])
    assert "nothing sent" in dry_run and "[image 640×480]" in dry_run and "gpt-4o (openai)" in dry_run
    # The two lines may come as one stream output or as two.
    detail = "".join(text_of(output) for output in outputs_of(nb, 'for detail in ("auto", "low")'))
    assert re.search(r"image_detail=auto\s+\d{3} prompt tokens\nimage_detail=low\s+\d{2} prompt tokens", detail), detail
    refused = text_of(outputs_of(nb, "%%llm -m gpt-3.5-turbo")[-1])
    assert refused.startswith("InvalidInputError: gpt-3.5-turbo does not take images"), refused
    assert "… 49,970 rows left out …" in text_of(outputs_of(nb, "%%llm\nThese are orders.")[0])
    classified = outputs_of(nb, "from typing import Literal")[-1]["data"]["text/html"]
    assert classified.count("<th>square-") == 8 and "<th>colour</th>" in classified
    from_python = text_of(outputs_of(nb, "reply = ipyllm.complete(")[0])
    assert "[image 640×480]" in from_python and "gpt-4o-mini 1 image," in from_python
    assert "<th>images</th>" in outputs_of(nb, 'ipyllm.usage()[["model", "images"')[0]["data"]["text/html"]
    # The figures the notebook shows itself are PNGs; what ipyllm shows never holds an image's bytes.
    assert "image/png" in outputs_of(nb, "%matplotlib inline")[0]["data"]
    magic_cells = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.startswith(("%%llm", "%llm"))]
    assert len(magic_cells) >= 6
    for cell in magic_cells:
        saved = json.dumps(cell.outputs, ensure_ascii=False)
        assert "iVBORw0KGgo" not in saved and "data:image" not in saved, cell.source
