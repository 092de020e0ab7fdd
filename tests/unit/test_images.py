"""Notebook objects in prompts (``ipyllm/_attach.py``), over real HTTP through litellm to the stub server: a figure
arrives as one PNG part of its own size, a model without vision is refused with nothing sent, a DataFrame is cut to
its token budget, the cache tells two figures apart, the estimate counts image tokens, no image bytes are kept."""

from __future__ import annotations

import base64
import io
import math
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.utils.capture import capture_output
from matplotlib.figure import Figure
from PIL import Image as PILImage

import ipyllm
from ipyllm import _api
from ipyllm._locations import default_usage_db
from ipyllm._prompt import interpolate
from ipyllm.testing import StubServer

from ..helpers import chat_requests, one_line

PNG_BASE64 = "iVBORw0KGgo"  # what every PNG's base64 starts with


def figure(width: float = 6.4, height: float = 4.8, dpi: int = 100, mark: tuple[int, int] | None = None) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [3, 1, 2])
    if mark is not None:
        fig.figimage(np.zeros((1, 1, 3)), xo=mark[0], yo=mark[1])  # one black pixel
    return fig


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part
        for message in body["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


def decoded(part: dict[str, Any]) -> PILImage.Image:
    url = part["image_url"]["url"]
    header, data = url.split(",", 1)
    assert header == "data:image/png;base64"
    return PILImage.open(io.BytesIO(base64.b64decode(data)))


def tiles_formula(width: int, height: int) -> int:
    """OpenAI's tile formula (high detail), as computed by hand here."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = int(width * scale), int(height * scale)
    scale = min(1.0, 768 / min(width, height))
    width, height = int(width * scale), int(height * scale)
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


# -- figures and images ----------------------------------------------------------------------------------
def test_a_figure_in_the_magic_arrives_as_one_png_part_of_its_size(ip: Any, live: StubServer) -> None:
    ip.user_ns["fig"] = figure()
    with capture_output() as captured:
        ip.run_cell("%%llm --no-stream\nWhat does {fig} show?")
    parts = image_parts(chat_requests(live)[-1].body)
    assert len(parts) == 1 and decoded(parts[0]).size == (640, 480)
    texts = [p["text"] for p in chat_requests(live)[-1].body["messages"][-1]["content"] if p["type"] == "text"]
    assert texts == ["What does ", " show?"]
    assert "[image 640×480]" in captured.stdout + "".join(str(o.data) for o in captured.outputs)
    row = _api.session.records.frame().iloc[-1]
    assert row["images"] == 1 and row["status"] == "ok"
    ip.run_cell("%%llm --no-stream\nJust words")
    assert _api.session.records.frame().iloc[-1]["images"] == 0  # a text prompt sends no image
    assert "1 image" in "".join(str(o.data) for o in captured.outputs)  # the footer


def test_a_figures_dpi_is_capped(live: StubServer) -> None:
    reply = ipyllm.complete("Describe it", images=[figure(4, 3, dpi=400)])
    assert decoded(image_parts(chat_requests(live)[-1].body)[0]).size == (600, 450)  # 4×3 inches at 150 dpi
    assert "[image 600×450]" in reply


@pytest.mark.parametrize("kind", ["pil", "array", "bytes", "path", "str-path", "ipython"])
def test_images_of_every_kind_are_sent(live: StubServer, tmp_path: Path, kind: str) -> None:
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[5:10, 5:10] = 255
    image = PILImage.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    from IPython.display import Image as IPythonImage

    value = {
        "pil": image,
        "array": pixels,
        "bytes": buffer.getvalue(),
        "path": tmp_path / "x.png",
        "str-path": str(tmp_path / "x.png"),
        "ipython": IPythonImage(data=buffer.getvalue()),
    }[kind]
    reply = ipyllm.complete("What is it?", images=[value])
    assert "[image 40×30]" in reply
    assert decoded(image_parts(chat_requests(live)[-1].body)[0]).size == (40, 30)
    assert reply.usage.images == 1


def test_messages_with_content_parts_go_as_they_are(live: StubServer) -> None:
    buffer = io.BytesIO()
    PILImage.new("RGB", (20, 10)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": url}}]}]
    reply = ipyllm.complete(messages)
    assert "Look: [image 20×10]" in reply and reply.usage.images == 1


def test_image_detail_goes_on_every_image(live: StubServer) -> None:
    ipyllm.config.image_detail = "low"
    low = ipyllm.complete("Describe", images=[figure()])
    assert image_parts(chat_requests(live)[-1].body)[0]["image_url"]["detail"] == "low"
    ipyllm.config.image_detail = "auto"
    auto = ipyllm.complete("Describe", images=[figure()])
    assert "detail" not in image_parts(chat_requests(live)[-1].body)[0]["image_url"]
    # The stub counts a low-detail image as 85 tokens, a 640×480 one at high detail by its tiles.
    assert auto.usage.prompt_tokens - low.usage.prompt_tokens == tiles_formula(640, 480) - 85


# -- checked before sending ------------------------------------------------------------------------------------
def test_a_model_without_vision_is_refused_and_nothing_is_sent(live: StubServer) -> None:
    with pytest.raises(ipyllm.InvalidInputError) as refused:
        ipyllm.complete("What is this?", images=[figure()], model="gpt-3.5-turbo")
    line = one_line(refused.value)
    assert line.startswith("InvalidInputError: gpt-3.5-turbo does not take images"), line
    from ipyllm._pricemap import price_map

    named = re.search(r"e\.g\. (.+?) \(-m", line)
    assert named is not None and all(price_map()[name]["supports_vision"] for name in named[1].split(", ")), line
    assert len(live.requests) == 0 and len(_api.session.records.frame()) == 0


def test_a_local_model_declared_vision_capable_takes_images(live: StubServer) -> None:
    with pytest.raises(ipyllm.InvalidInputError, match="openai/stub-local does not take images"):
        ipyllm.complete("What is this?", images=[figure()], model="openai/stub-local")
    assert len(live.requests) == 0
    ipyllm.config.prices = {"stub-local": {"input_cost_per_token": 0, "output_cost_per_token": 0, "supports_vision": True}}
    reply = ipyllm.complete("What is this?", images=[figure()], model="openai/stub-local")
    assert "[image 640×480]" in reply and len(live.requests) == 1


def test_an_undecodable_image_is_refused_before_sending(live: StubServer) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        }
    ]
    with pytest.raises(ipyllm.InvalidInputError, match="cannot be decoded"):
        ipyllm.complete(messages)
    assert len(live.requests) == 0


def test_an_image_over_the_providers_limit_is_downscaled_with_a_note(live: StubServer, capsys: pytest.CaptureFixture[str]) -> None:
    reply = ipyllm.complete("Describe", images=[PILImage.new("RGB", (5000, 1000), "white")])
    (part,) = image_parts(chat_requests(live)[-1].body)
    width, height = decoded(part).size if part["image_url"]["url"].startswith("data:image/png") else (0, 0)
    assert max(width, height) <= 2048 and "[image 5000×1000]" not in reply
    assert "downscaled" in capsys.readouterr().err


# -- tables ----------------------------------------------------------------------------------------------
def test_a_100000_row_dataframe_is_cut_to_the_token_budget() -> None:
    from ipyllm._litellm import load_litellm

    frame = pd.DataFrame({"a": np.arange(100_000), "b": np.linspace(0, 1, 100_000), "c": ["word"] * 100_000})
    text = interpolate("Summarize {df}", {"df": frame}, 2000)
    assert isinstance(text, str)
    tokens = load_litellm().token_counter(model="gpt-4o-mini", text=text.removeprefix("Summarize "))
    assert 1000 < tokens <= 2000
    left_out = re.search(r"([\d,]+) rows left out", text)
    assert left_out is not None
    shown = len(text.splitlines()) - 3  # the shape line, the CSV header, the "left out" line
    assert int(left_out[1].replace(",", "")) + shown == 100_000
    assert "100,000 rows × 3 columns" in text and "int64" in text


def test_a_small_dataframe_is_sent_whole(live: StubServer, ip: Any) -> None:
    ip.user_ns["df"] = pd.DataFrame({"city": ["Oslo", "Lima"], "temp": [3.5, 18.0]})
    ip.run_cell("%%llm --no-stream\nWhich is warmer? {df}")
    prompt = chat_requests(live)[-1].body["messages"][-1]["content"]
    assert isinstance(prompt, str) and "Oslo,3.5" in prompt and "Lima,18" in prompt and "left out" not in prompt


# -- cache, estimate, ledger -------------------------------------------------------------------------------
def test_figures_differing_by_one_pixel_are_two_requests_and_the_same_twice_is_one(live: StubServer) -> None:
    ipyllm.config.cache = True
    ipyllm.complete("Describe", images=[figure(mark=(10, 10))])
    ipyllm.complete("Describe", images=[figure(mark=(11, 10))])
    assert len(live.requests) == 2
    again = ipyllm.complete("Describe", images=[figure(mark=(10, 10))])
    assert len(live.requests) == 2 and again.usage.status == "cached" and again.usage.images == 1


def test_the_estimate_counts_image_tokens_by_the_tile_formula(live: StubServer) -> None:
    text = ipyllm.estimate("Describe this chart", model="gpt-4o")
    image = PILImage.new("RGB", (1600, 900), "white")
    with_image = ipyllm.estimate("Describe this chart", images=[image], model="gpt-4o")
    assert with_image.prompt_tokens - text.prompt_tokens == tiles_formula(1600, 900)  # 85 + 170 × 4 tiles = 765
    low = ipyllm.estimate("Describe this chart", images=[image], model="gpt-4o", image_detail="low")
    assert low.prompt_tokens - text.prompt_tokens == 85
    assert len(live.requests) == 0


def test_the_dry_run_shows_the_image_as_its_size_and_counts_it(ip: Any, live: StubServer) -> None:
    ip.user_ns["fig"] = figure()
    with capture_output() as captured:
        ip.run_cell("%%llm --dry-run -m gpt-4o\nWhat does {fig} show?")
    shown = "".join(str(o.data) for o in captured.outputs)
    assert "[image 640×480]" in shown and PNG_BASE64 not in shown and "1 image" in shown
    assert len(live.requests) == 0


def test_no_image_bytes_reach_the_ledger(live: StubServer) -> None:
    ipyllm.config.usage_db = str(default_usage_db().path)
    ipyllm.config.cache = True
    ipyllm.complete("Describe", images=[figure()])
    ipyllm.complete("Describe", images=[figure()])
    ledger = default_usage_db().path
    with sqlite3.connect(ledger) as connection:
        assert connection.execute("SELECT images, status FROM usage ORDER BY timestamp_us").fetchall() == [(1, "ok"), (1, "cached")]
    assert PNG_BASE64.encode() not in ledger.read_bytes()
    assert b"data:image" not in ledger.read_bytes()


# -- chat and map ----------------------------------------------------------------------------------------
def test_a_chat_keeps_its_images_and_shows_them_by_size(ip: Any, live: StubServer) -> None:
    ip.user_ns["fig"] = figure()
    ip.run_cell("%%llm --chat --no-stream\nRemember {fig}")
    ip.run_cell("%%llm --chat --no-stream\nWhat did I show you?")
    assert len(image_parts(chat_requests(live)[-1].body)) == 1  # sent again with the history
    with capture_output() as captured:
        ip.run_cell("%llm_chat")
    shown = "".join(str(o.data) for o in captured.outputs)
    assert "Remember [image 640×480]" in shown and PNG_BASE64 not in shown


def test_the_image_option_attaches_a_variable_a_path_and_refuses_an_unknown_name(ip: Any, live: StubServer, tmp_path: Path) -> None:
    ip.user_ns["chart"] = figure(3, 2)
    PILImage.new("RGB", (8, 6)).save(tmp_path / "small.png")
    ip.run_cell(f"%%llm --no-stream --image chart --image {tmp_path / 'small.png'}\nCompare them")
    sizes = [decoded(p).size for p in image_parts(chat_requests(live)[-1].body)]
    assert sizes == [(300, 200), (8, 6)]
    with capture_output() as captured:
        ip.run_cell("%%llm --image nothing_here\nCompare")
    assert "--image nothing_here: no variable, file or URL" in captured.stderr
    assert len(chat_requests(live)) == 1


def test_map_over_20_image_paths_with_a_schema_gives_aligned_columns(live: StubServer, tmp_path: Path) -> None:
    paths = []
    for number in range(20):
        path = tmp_path / f"shape-{number:02}.png"
        PILImage.new("RGB", (10 + number, 10), "red" if number % 2 else "blue").save(path)
        paths.append(path)
    data = pd.DataFrame({"picture": paths, "n": range(20)}, index=[f"row{i}" for i in range(20)])
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    result = ipyllm.map("Label this picture: {picture}", data, schema=schema, progress=False)
    assert list(result.index) == list(data.index) and list(result.columns) == ["label"]
    sizes = sorted(decoded(image_parts(r.body)[0]).size for r in chat_requests(live))
    assert sizes == sorted((10 + n, 10) for n in range(20))
    usage = _api.session.records.frame()
    assert (usage["images"] == 1).all() and len(usage) == 20
