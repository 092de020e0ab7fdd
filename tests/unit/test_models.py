"""Model lists: litellm's catalogue, a ``base_url`` server's ``GET /models``, and the 404 advice built from it;
with ``base_url``, the server's list without importing litellm, a line naming what there is when a filter matches
nothing, and arguments that are not strings refused in one line (issue 17).

Real HTTP throughout: the stub server, and a small OpenAI-compatible server below that records the
``Authorization`` header of its ``GET /models`` and states a vLLM-style ``max_model_len``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import ipyllm
from ipyllm import _api, _models, _pricemap, _widget
from ipyllm._litellm import load_litellm
from ipyllm.testing import STUB_MODELS, Fault, StubServer

from ..conftest import SECRET


class ModelServer:
    """Lists ``models`` at ``GET /v1/models`` (or answers 404 there when ``models`` is None); 404 for every model call."""

    def __init__(self, models: list[str] | None) -> None:
        self.models = models
        self.authorization: list[str | None] = []
        self.posts = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                owner.authorization.append(self.headers.get("Authorization"))
                if owner.models is None or self.path != "/v1/models":
                    self._json(404, {"error": {"message": "no such route"}})
                    return
                data = [{"id": name, "object": "model", "max_model_len": 32768} for name in owner.models]
                self._json(200, {"object": "list", "data": data})

            def do_POST(self) -> None:
                owner.posts += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._json(
                    404, {"error": {"message": "The model does not exist", "type": "invalid_request_error", "code": "model_not_found"}}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def many_models() -> Iterator[ModelServer]:
    server = ModelServer([f"local-model-{n}" for n in range(8)])
    yield server
    server.close()


# -- the catalogue -------------------------------------------------------------------------------------------


def test_the_picker_and_the_model_list_share_one_catalogue() -> None:
    assert _widget.catalogue is _models.catalogue
    known = _models.catalogue()
    assert "gpt-4o-mini" in known.chat_models["openai"]
    assert known.entries["text-embedding-3-small"].mode == "embedding"


def test_models_lists_litellms_catalogue_with_context_and_prices(clean_config: ipyllm.LLMConfig) -> None:
    frame = ipyllm.models("gpt-4o-mini")
    assert frame.index.name == "model" and list(frame.columns) == list(_models.MODEL_COLUMNS)
    assert {str(t) for t in frame.dtypes} == {"string", "Int64", "float64"}
    row = frame.loc["gpt-4o-mini"]
    assert (row["provider"], row["mode"], row["context_window"]) == ("openai", "chat", 128000)
    assert row["input_usd_per_1m"] == pytest.approx(0.15) and row["output_usd_per_1m"] == pytest.approx(0.6)
    assert all("gpt-4o-mini" in name for name in frame.index)
    everything = ipyllm.models()
    assert len(everything) > 1000 and set(everything["mode"]) <= set(_models.TEXT_MODES)


def test_models_filters_by_words_and_provider(clean_config: ipyllm.LLMConfig) -> None:
    claude = ipyllm.models("haiku", provider="anthropic")
    assert len(claude) > 0 and set(claude["provider"]) == {"anthropic"}
    assert all("haiku" in name.lower() for name in claude.index)
    assert ipyllm.models("no such model anywhere").empty
    with pytest.raises(ValueError, match=r"unknown provider 'antropic': did you mean anthropic"):
        ipyllm.models(provider="antropic")


# -- a base_url server's own list ---------------------------------------------------------------------------


def test_with_base_url_the_servers_list_is_shown_and_the_key_sent_as_bearer(clean_config: ipyllm.LLMConfig) -> None:
    server = ModelServer(["gpt-4o-mini", "my-finetune"])
    try:
        clean_config.update(base_url=server.base_url, api_key=SECRET)
        with capture_output() as captured:
            frame = ipyllm.models()
        assert list(frame.index) == ["openai/gpt-4o-mini", "openai/my-finetune"]
        assert list(frame["context_window"]) == [32768, 32768], "the server's own max_model_len"
        assert frame.loc["openai/gpt-4o-mini", "input_usd_per_1m"] == pytest.approx(0.15)
        assert math.isnan(frame.loc["openai/my-finetune", "input_usd_per_1m"])
        assert frame.loc["openai/gpt-4o-mini", "mode"] == "chat" and frame["mode"].isna().tolist() == [False, True], "unknown, not guessed"
        assert server.authorization == [f"Bearer {SECRET}"]
        assert SECRET not in captured.stdout + captured.stderr + frame.to_string() + frame.to_html()
        # The session's prices apply to the server's models too.
        clean_config.prices = {"my-finetune": "gpt-4o"}
        assert ipyllm.models("finetune").loc["openai/my-finetune", "input_usd_per_1m"] == pytest.approx(2.5)
        assert _models.server_models(server.base_url, None) == ["gpt-4o-mini", "my-finetune"]
        # A provider asked for: litellm's catalogue, whatever the base_url.
        assert set(ipyllm.models("gpt-4o", provider="openai")["provider"]) == {"openai"}
    finally:
        server.close()


def test_a_server_without_a_model_list_falls_back_to_the_catalogue(
    clean_config: ipyllm.LLMConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ModelServer(None)
    try:
        clean_config.update(base_url=server.base_url)
        assert _models.server_models(server.base_url) is None
        frame = ipyllm.models("gpt-4o-mini")
        assert "gpt-4o-mini" in frame.index
        assert f"the server at {server.base_url} did not list its models" in capsys.readouterr().err
    finally:
        server.close()
    assert _models.server_models(server.base_url, timeout=2) is None, "a closed port is None, not an error"


def test_llm_models_magic_returns_the_frame(ip: Any, live: StubServer) -> None:
    frame = ip.run_line_magic("llm_models", "")
    assert list(frame.index) == [f"openai/{name}" for name in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "stub-local")]
    assert list(ip.run_line_magic("llm_models", "4o mini").index) == ["openai/gpt-4o-mini"]
    claude = ip.run_line_magic("llm_models", "-p anthropic haiku")
    assert len(claude) and set(claude["provider"]) == {"anthropic"}
    with pytest.raises(UsageError, match="unknown provider 'nope'"):
        ip.run_line_magic("llm_models", "--provider nope")
    assert "--provider" in ip.magics_manager.registry["LLMMagics"].llm_models.__doc__


# -- the 404 advice -------------------------------------------------------------------------------------------


def test_a_404_with_base_url_lists_what_the_server_offers(live: StubServer) -> None:
    live.script(Fault.status(404, "The model `fake-model` does not exist"))
    with pytest.raises(ipyllm.UnknownModelError) as caught:
        ipyllm.complete("hello", model="openai/fake-model")
    message = caught.value.message
    assert message.startswith(f"the server at {live.base_url} does not serve 'openai/fake-model' (The model `fake-model` does not exist)")
    assert "it offers: gpt-4o-mini, gpt-4o, text-embedding-3-small, stub-local: use one of them, e.g. %llm_config model=openai/" in message
    assert "with base_url" not in message, "the user already named openai/... with base_url"
    assert SECRET not in message
    assert len(live.requests) == 1 and _api.session.ledger.rows()[-1].status == "error"


def test_a_404_names_a_few_of_many_and_the_closest_first(
    session: _api.Session, clean_config: ipyllm.LLMConfig, many_models: ModelServer
) -> None:
    clean_config.update(base_url=many_models.base_url, api_key=SECRET, timeout=5)
    with pytest.raises(ipyllm.UnknownModelError) as caught:
        ipyllm.complete("hello", model="openai/local-model-7b")
    message = caught.value.message
    assert "it offers: local-model-0, local-model-1, local-model-2, local-model-3, local-model-4, ... and 3 more" in message
    assert message.endswith("e.g. %llm_config model=openai/local-model-7")
    assert many_models.posts == 1 and many_models.authorization == [f"Bearer {SECRET}"]


def test_a_404_from_a_server_without_a_list_still_does_not_advise_what_was_done(
    session: _api.Session, clean_config: ipyllm.LLMConfig
) -> None:
    server = ModelServer(None)
    try:
        clean_config.update(base_url=server.base_url, timeout=5, api_key="sk-stub")
        with pytest.raises(ipyllm.UnknownModelError) as caught:
            ipyllm.complete("hello", model="openai/fake-model")
    finally:
        server.close()
    message = caught.value.message
    assert message.startswith(f"the server at {server.base_url} does not serve 'openai/fake-model'")
    assert "check the name against the server's own model list" in message and "with base_url" not in message


def test_an_unprefixed_name_the_server_serves_is_told_to_take_the_prefix(live: StubServer) -> None:
    with pytest.raises(ipyllm.UnknownModelError) as caught:
        ipyllm.complete("hello", model="stub-local")
    assert f"the server at {live.base_url} serves 'stub-local'" in caught.value.message
    assert "name it openai/stub-local" in caught.value.message
    assert live.requests == [], "litellm refused it before sending"


def test_without_base_url_the_advice_is_unchanged(session: _api.Session, clean_config: ipyllm.LLMConfig) -> None:
    from ipyllm._explain import unknown_model_message

    assert unknown_model_message("gpt-4o-mni").startswith("unknown model 'gpt-4o-mni': did you mean gpt-4o-mini")
    assert "For an OpenAI-compatible server use openai/llama3 with base_url" in unknown_model_message("llama3")


def test_a_404_for_a_model_the_server_lists_does_not_blame_the_prefix(session: _api.Session, clean_config: ipyllm.LLMConfig) -> None:
    server = ModelServer(["gpt-4o-mini"])
    try:
        clean_config.update(base_url=server.base_url, timeout=5, api_key="sk-stub")
        with pytest.raises(ipyllm.UnknownModelError) as caught:
            ipyllm.complete("hello", model="gpt-4o-mini")
    finally:
        server.close()
    assert server.posts == 1
    assert caught.value.message == (
        f"the server at {server.base_url} does not serve 'gpt-4o-mini' (The model does not exist), though it lists it: "
        "check base_url (OpenAI-style ones end in /v1)"
    )
    assert "name it openai/" not in caught.value.message


def test_a_name_litellm_does_not_know_gets_the_servers_closest_names(live: StubServer) -> None:
    with pytest.raises(ipyllm.UnknownModelError) as caught:
        ipyllm.complete("hello", model="stub-locl")
    assert caught.value.message == (
        "unknown model 'stub-locl': did you mean stub-local? the server at "
        f"{live.base_url} offers: gpt-4o-mini, gpt-4o, text-embedding-3-small, stub-local: e.g. %llm_config model=openai/stub-local"
    )
    assert live.requests == []


def test_a_404_for_an_embedding_model_names_the_embedding_setting(live: StubServer) -> None:
    live.script(Fault.status(404, "no such embedding model"))
    with pytest.raises(ipyllm.UnknownModelError) as caught:
        ipyllm.embed(["hello"], model="openai/fake-embedder")
    assert "does not serve 'openai/fake-embedder'" in caught.value.message
    assert "e.g. %llm_config embedding_model=openai/" in caught.value.message


def test_an_interrupt_while_listing_leaves_the_key_in_no_frame_and_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipyllm._secrets import Secret

    def interrupted_urlopen(request: Any, timeout: float) -> Any:
        header = request.get_header("Authorization")  # what urllib's own frames hold while a request is under way
        assert header == f"Bearer {SECRET}"
        raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", interrupted_urlopen)
    with pytest.raises(KeyboardInterrupt) as caught:
        _models.server_models("http://127.0.0.1:9/v1", Secret(SECRET))
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    frames = []
    traceback = caught.value.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    assert [f.f_code.co_name for f in frames][-2:] == ["server_models", "_server_listing"]
    for frame in frames:
        assert SECRET not in repr(frame.f_locals), frame.f_code.co_name


# -- without litellm: base_url's list in a fresh process, filters that match nothing (issue 17) -----------------

# A fresh process's first call runs in a ``python -c`` subprocess whose litellm warm-up is switched off, so that
# litellm's background import cannot hide an import by ``models()``.

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
