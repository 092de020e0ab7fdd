"""The status bar item and the usage panel on a team ledger: a real PostgreSQL server (tests/postgres/pg.py), another
user's calls made by a separate Python process, this user's by a kernel in a real JupyterLab, headless Chromium.

The status item adds the team's figures against the team's daily budget, the panel adds the by-user table, and
the database password shows nowhere on the page. Skipped without PostgreSQL locally, failed under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from ..postgres.pg import PostgresServer
from .conftest import ARTIFACTS, STEP_MS, Lab, notebook_page, require, run_cell, wait_for_prompt_number
from .test_usage_panel import DOCS_IMAGES, FRESH_MS, installed_labextension

pytestmark = pytest.mark.browser

CALL_COST = 1.25


@pytest.fixture
def team_url(pg: PostgresServer) -> str:
    return pg.url(pg.new_database())


@pytest.fixture
def lab_environment(team_url: str) -> dict[str, str]:
    return {
        "LLM_USAGE_DB": team_url,
        "LLM_DAILY_BUDGET_USD": "20",
        "LLM_USER_DAILY_BUDGET_USD": "5",
        "LLM_USER": "ada",
        "LLM_MODEL": "gpt-4o-mini",
    }


def test_team_figures_and_the_by_user_table(lab: Lab, stub: StubServer, pg: PostgresServer, team_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    require(installed_labextension() is not None, "the built ipyllm labextension (pip install -e . builds it with npm)")
    expect.set_options(timeout=STEP_MS)
    stub.usage_cost = CALL_COST
    # Grace, on another machine of the team, made two calls today.
    grace = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    grace.update(LLM_USAGE_DB=team_url, LLM_USER="grace", LLM_BASE_URL=stub.base_url, LLM_API_KEY=SECRET, LLM_MODEL="gpt-4o")
    code = "import ipyllm\nfor q in ('one', 'two'):\n    ipyllm.complete(q)\n"
    subprocess.run([sys.executable, "-c", code], env=grace, cwd=tmp_path, check=True, timeout=180, capture_output=True)

    shot = ARTIFACTS / "usage-panel-team.png"

    with notebook_page(lab, "team.ipynb", ["%load_ext ipyllm", "%%llm\nHow many moons has Mars?"], viewport=(1280, 1100)) as page:
        item = page.locator(".ipyllm-StatusItem")
        expect(item).to_have_text("LLM today $0.00 of $5.00 · 0 calls · team $2.50 of $20.00 · 2 calls")

        run_cell(page, 0)
        wait_for_prompt_number(page, 0)
        run_cell(page, 1)
        wait_for_prompt_number(page, 1)
        expect(item).to_have_text("LLM today $1.25 of $5.00 · 1 call · team $3.75 of $20.00 · 3 calls", timeout=FRESH_MS)

        item.click()
        panel = page.locator(".ipyllm-Panel")
        expect(panel.locator(".ipyllm-Panel-about")).to_contain_text("ada · postgresql ledger")
        by_user = panel.locator(".ipyllm-by-user tbody tr")
        expect(by_user).to_have_count(2)
        expect(panel.locator(".ipyllm-by-user tbody tr", has_text="grace")).to_contain_text("$2.50")
        expect(panel.locator(".ipyllm-by-user tbody tr", has_text="ada")).to_contain_text("$1.25")
        expect(panel.locator(".ipyllm-by-model tbody tr")).to_have_count(2)
        calls = panel.locator(".ipyllm-section", has_text="Latest calls").locator("tbody tr")
        expect(calls).to_have_count(3)
        expect(calls.first).to_contain_text("ada")
        budgets = panel.locator(".ipyllm-section", has_text="Budgets")
        expect(budgets).to_contain_text("$16.25")  # left of the team's $20.00
        expect(budgets).to_contain_text("$3.75")  # left of ada's $5.00
        page.wait_for_timeout(300)
        panel.screenshot(path=str(shot))
        assert pg.password not in page.content()

        # The settings: amounts in euros at 0.8 per dollar, without the team's figures (read when the page loads).
        settings = tmp_path / "home" / "lab-settings" / "ipyllm" / "plugin.jupyterlab-settings"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"currency": "EUR", "usdRate": 0.8, "showTeam": False}))
        page.reload()
        expect(item).to_have_text("LLM today €1.00 of €4.00 · 1 call")
        item.click()
        expect(panel.locator(".ipyllm-by-model tbody tr", has_text="gpt-4o-mini")).to_contain_text("€1.00")
        expect(panel.locator(".ipyllm-by-user")).to_have_count(0)

    if os.environ.get("IPYLLM_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, DOCS_IMAGES / shot.name)
