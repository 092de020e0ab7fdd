"""``models()`` / ``%llm_models`` with ``base_url`` (issue 17): the server's list without importing litellm, a
line naming what there is when a filter matches nothing, and arguments that are not strings refused in one line.

Over real HTTP to the stub server; the first call of a fresh process runs in a ``python -c`` subprocess whose
litellm warm-up is switched off, so that litellm's background import cannot hide an import by ``models()``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _models, _pricemap
from ipyllm._litellm import load_litellm
from ipyllm.testing import STUB_MODELS, StubServer

from .conftest import SECRET
from .unit.test_models import ModelServer

LISTED = [f"openai/{name}" for name in STUB_MODELS]
OFFERED = ", ".join(STUB_MODELS)

MAGIC = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
from ipyllm import _magics

warmed = []
_magics.warm_up = lambda: warmed.append(True)  # what %load_ext calls: litellm's import in the background
settings = Config()
settings.HistoryManager.enabled = False
ip = InteractiveShell.instance(config=settings)
ip.run_line_magic("load_ext", "ipyllm")
frame = ip.run_line_magic("llm_models", "")
none = ip.run_line_magic("llm_models", "no such words")
print(json.dumps({"warmed": warmed, "models": list(frame.index), "input": frame["input_usd_per_1m"].tolist(),
                  "context": frame["context_window"].astype("float64").fillna(-1).astype(int).tolist(),
                  "none": len(none), "litellm": "litellm" in sys.modules}))
"""

API = """
import json, sys
import ipyllm

ipyllm.config.prices = {"stub-local": "gpt-4o"}
frame = ipyllm.models()
print(json.dumps({"models": list(frame.index), "input": frame["input_usd_per_1m"].tolist(),
                  "output": frame["output_usd_per_1m"].tolist(), "mode": [str(m) for m in frame["mode"]],
                  "litellm": "litellm" in sys.modules}))
"""


def run_fresh(code: str, stub: StubServer, cwd: Path) -> tuple[dict[str, Any], str]:
    """Run ``code`` in a new Python process pointed at ``stub``; its printed JSON and its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LLM_MODEL")}
    env.update(LLM_BASE_URL=stub.base_url, LLM_API_KEY=SECRET, LLM_USAGE_DB=":memory:")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_llm_models_in_a_fresh_process_lists_the_servers_models_without_importing_litellm(stub: StubServer, tmp_path: Path) -> None:
    shown, stderr = run_fresh(MAGIC, stub, tmp_path)
    assert shown["warmed"] == [True], "%load_ext reached the switched-off warm-up"
    assert shown["models"] == LISTED
    assert shown["input"][0] == pytest.approx(0.15), "gpt-4o-mini's price, from litellm's bundled price map"
    assert shown["context"][0] == 128000 and shown["context"][-1] == -1, "gpt-4o-mini's from the price map; none known for stub-local"
    assert math.isnan(shown["input"][-1]), "stub-local has no known price"
    assert shown["none"] == 0
    assert f"ipyllm: no model of the server at {stub.base_url} matches 'no such words'; it offers: {OFFERED}" in stderr
    assert shown["litellm"] is False, "litellm was imported to list the server's models"


def test_models_in_a_fresh_process_lists_the_servers_models_without_importing_litellm(stub: StubServer, tmp_path: Path) -> None:
    shown, _ = run_fresh(API, stub, tmp_path)
    assert shown["models"] == LISTED
    assert shown["input"][:2] == pytest.approx([0.15, 2.5]) and shown["output"][:2] == pytest.approx([0.6, 10.0])
    assert shown["input"][-1] == pytest.approx(2.5) and shown["output"][-1] == pytest.approx(10.0), "the session's prices apply"
    assert shown["mode"] == ["chat", "chat", "embedding", "<NA>"]
    assert shown["litellm"] is False


def test_the_bundled_price_map_is_litellms_own(clean_config: ipyllm.LLMConfig) -> None:
    bundled, loaded = _pricemap._bundled(), load_litellm().model_cost
    text_models = {name for name, entry in bundled.items() if isinstance(entry, dict) and entry.get("mode") in _models.TEXT_MODES}
    assert len(text_models) > 1000 and text_models <= set(loaded)
    for name in ("gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "text-embedding-3-small"):
        assert bundled[name]["input_cost_per_token"] == loaded[name]["input_cost_per_token"], name
    assert _pricemap._bundled() is bundled, "read once"


# -- nothing matches ----------------------------------------------------------------------------------------------


def test_a_filter_that_matches_none_of_the_servers_models_names_what_it_offers(
    live: StubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ipyllm.models("4o mini").index.tolist() == ["openai/gpt-4o-mini"]
    assert capsys.readouterr().err == ""
    frame = ipyllm.models("llama 70b")
    assert frame.empty and list(frame.columns) == list(_models.MODEL_COLUMNS)
    assert capsys.readouterr().err.splitlines() == [
        f"ipyllm: no model of the server at {live.base_url} matches 'llama 70b'; it offers: {OFFERED}"
    ]


def test_a_server_with_many_models_names_a_few(
    clean_config: ipyllm.LLMConfig, many: ModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_config.base_url = many.base_url
    assert ipyllm.models("gemma").empty
    assert capsys.readouterr().err.splitlines() == [
        f"ipyllm: no model of the server at {many.base_url} matches 'gemma'; it offers: local-model-0, local-model-1, local-model-2, "
        "local-model-3, local-model-4, ... and 3 more"
    ]


def test_a_filter_that_matches_nothing_in_the_catalogue_names_close_matches(
    clean_config: ipyllm.LLMConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ipyllm.models("gtp-4o-mini").empty
    line = capsys.readouterr().err.splitlines()
    assert len(line) == 1 and line[0].startswith("ipyllm: no model in litellm's catalogue matches 'gtp-4o-mini'; close matches: ")
    assert "gpt-4o-mini" in line[0].split("close matches: ")[1].split(", ")
    assert ipyllm.models("zzqx", provider="anthropic").empty
    assert capsys.readouterr().err.splitlines() == [
        "ipyllm: no model in anthropic's models in litellm's catalogue matches 'zzqx'; try fewer or shorter words"
    ]


def test_llm_models_says_what_the_server_offers_when_nothing_matches(ip: Any, live: StubServer) -> None:
    with capture_output() as captured:
        frame = ip.run_line_magic("llm_models", "no such model")
    assert frame.empty
    assert captured.stderr.splitlines() == [
        f"ipyllm: no model of the server at {live.base_url} matches 'no such model'; it offers: {OFFERED}"
    ]


# -- arguments that are not strings ----------------------------------------------------------------------------


@pytest.fixture
def many() -> Any:
    server = ModelServer([f"local-model-{n}" for n in range(8)])
    yield server
    server.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "line"),
    [
        ((123,), {}, "InvalidInputError: filter must be a string or None, not int 123: e.g. models('gpt 4o')"),
        ((["gpt"],), {}, "InvalidInputError: filter must be a string or None, not list ['gpt']: e.g. models('gpt 4o')"),
        ((), {"provider": 5}, "InvalidInputError: provider must be a string or None, not int 5: e.g. models(provider='anthropic')"),
    ],
)
def test_models_refuses_what_is_not_a_string_in_one_line_before_asking_the_server(
    clean_config: ipyllm.LLMConfig, many: ModelServer, args: tuple[Any, ...], kwargs: dict[str, Any], line: str
) -> None:
    clean_config.update(base_url=many.base_url, api_key=SECRET)
    with pytest.raises(ipyllm.InvalidInputError) as caught:
        ipyllm.models(*args, **kwargs)
    assert caught.value._render_traceback_() == [line]
    assert isinstance(caught.value, (TypeError, ValueError))
    assert many.authorization == [] and many.posts == 0, "nothing was sent"


def test_an_unknown_provider_is_one_line_too(ip: Any, clean_config: ipyllm.LLMConfig) -> None:
    with pytest.raises(ipyllm.InvalidInputError) as caught:
        ipyllm.models(provider="antropic")
    (line,) = caught.value._render_traceback_()
    assert line.startswith("InvalidInputError: unknown provider 'antropic': did you mean anthropic")
    with pytest.raises(UsageError, match=r"^unknown provider 'antropic': did you mean anthropic"):
        ip.run_line_magic("llm_models", "-p antropic")
