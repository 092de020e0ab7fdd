"""The model picker as a user meets it: real JupyterLab, a real kernel, headless Chromium, the mouse.

JupyterLab runs in a subprocess on 127.0.0.1 with a token, in temporary directories (nothing is read
from or written to the user's own Jupyter or IPython settings), with widget state saving switched on so
that the saved notebook holds the widgets' state. The kernel talks to the stub server of this test
process. Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; without it the test is
skipped locally and fails under CI. The rendered picker is saved to ``artifacts/picker.png``.
"""

from __future__ import annotations

import re
import shutil
import time
from typing import Any

import pytest

from ipyllm.testing import StubServer

from ..conftest import SECRET
from .conftest import ARTIFACTS, STEP_MS, Lab, notebook_page, outputs_text, run_cell, wait_for_prompt_number

pytestmark = pytest.mark.browser

TYPED_KEY = "sk-typed-into-the-browser-5e6f7a8b9c"
PROMPT = "Which model answers this?"
CELLS = ["%load_ext ipyllm", "%llm_config", f"%%llm\n{PROMPT}"]


def test_the_picker_in_jupyterlab(lab: Lab, stub: StubServer) -> None:
    from playwright.sync_api import expect

    # Assertions wait as long as steps do: %llm_config waits for litellm's import (10 s and more on a busy machine).
    expect.set_options(timeout=STEP_MS)
    started = time.perf_counter()

    notebook = lab.root / "picker.ipynb"
    with notebook_page(lab, "picker.ipynb", CELLS) as page:
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
        listbox = picker.locator("select[size]")
        option = listbox.locator("option", has_text=re.compile(r"^gpt-4o$"))
        expect(option).to_have_count(1)
        # The list filters as you type, one kernel round trip per key: wait for the last key's list, or it
        # is redrawn (and scrolled back to the session's model) after the wheel below.
        expect(listbox.locator("option").filter(has_not_text="gpt-4o")).to_have_count(0)
        # The list shows the session's model (gpt-4o-mini); gpt-4o is above it: scroll up with the wheel.
        listbox.hover()
        page.mouse.wheel(0, -2000)
        deadline = time.monotonic() + STEP_MS / 1000
        while True:  # the wheel scrolls smoothly: wait until gpt-4o is wholly in view
            box, shown = option.bounding_box(), listbox.bounding_box()
            assert box is not None and shown is not None
            if shown["y"] <= box["y"] and box["y"] + box["height"] <= shown["y"] + shown["height"]:
                break
            assert time.monotonic() < deadline, f"gpt-4o is in view: option {box}, list {shown}"
            page.wait_for_timeout(200)
            page.mouse.wheel(0, -2000)  # and again, should a late redraw have scrolled the list back
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
        assert f"[gpt-4o] {PROMPT}" in outputs_text(page, 2, showing="[gpt-4o]")
        expect(picker).to_contain_text("Session spend: 1 call")
        picker.screenshot(path=str(ARTIFACTS / "picker.png"))

        page.keyboard.press("Control+s")
        expect(page.locator(".jp-mod-dirty")).to_have_count(0)
        page.wait_for_timeout(500)

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
