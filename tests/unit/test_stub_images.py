"""The stub server's image and file parts, over real HTTP through litellm: echoed in place as ``[image W×H]``,
counted by OpenAI's tile formula on top of the text's tokens, and an image that cannot be decoded refused with
OpenAI's 400, streamed or not (ipyllm itself refuses such an image before sending).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from matplotlib.figure import Figure

import ipyllm
from ipyllm._parts import File, as_image, image_tokens
from ipyllm.testing import StubServer, count_tokens

TURNS = 3 + 3  # the user message's turn and the reply's


def figure_image(width_in: float = 6.4, height_in: float = 4.8) -> Any:
    figure = Figure(figsize=(width_in, height_in))
    figure.add_subplot().plot([1, 2, 3], [3, 1, 2])
    image = as_image(figure)
    assert image is not None
    return image


def asking(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def post(stub: StubServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{stub.base_url}/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_an_image_is_echoed_in_place_and_counted_by_its_tiles(live: StubServer) -> None:
    image = figure_image()
    reply = ipyllm.complete(asking(text("Describe "), image.part(), text(" briefly.")))
    assert str(reply) == "[gpt-4o-mini] Describe [image 640×480] briefly."
    assert image_tokens(640, 480) == 85 + 170 * 2 == 425
    assert reply.usage.prompt_tokens == TURNS + count_tokens("Describe briefly.") + 425
    assert reply.usage.completion_tokens == count_tokens("[gpt-4o-mini] Describe [image 640×480] briefly.")
    sent = live.requests[0].body["messages"][0]["content"]
    assert sent[1] == {"type": "image_url", "image_url": {"url": image.url}}, "the request is recorded as it came"


def test_detail_and_size_change_the_tokens(live: StubServer) -> None:
    big = figure_image(12.8, 12.8)  # at the figure's 100 dpi
    assert (big.width, big.height) == (1280, 1280)
    high = ipyllm.complete(asking(text("a"), big.part("high")))
    low = ipyllm.complete(asking(text("a"), big.part("low")))
    assert high.usage.prompt_tokens == TURNS + 1 + 85 + 170 * 4  # 768×768: 2×2 tiles
    assert low.usage.prompt_tokens == TURNS + 1 + 85
    assert str(high) == str(low) == "[gpt-4o-mini] a [image 1280×1280]"


def test_a_streamed_call_echoes_and_counts_the_same(live: StubServer) -> None:
    image = figure_image()
    pieces: list[str] = []
    reply = ipyllm.complete(asking(text("Describe"), image.part()), stream=True, on_text=pieces.append)
    assert str(reply) == "".join(pieces) == "[gpt-4o-mini] Describe [image 640×480]"
    assert reply.usage.prompt_tokens == TURNS + 1 + 425
    assert live.requests[0].body["stream"] is True


def test_remote_images_and_files(live: StubServer) -> None:
    pdf = File(b"%PDF-1.7\n" + bytes(2491), "application/pdf", "report.pdf")
    url = "https://example.com/cat.png"
    reply = ipyllm.complete(asking(text("Compare"), {"type": "image_url", "image_url": {"url": url}}, pdf.part()))
    assert str(reply) == f"[gpt-4o-mini] Compare [image {url}] [file application/pdf 2500 bytes]"
    assert reply.usage.prompt_tokens == TURNS + 1 + 85 + 25


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,not base64 at all!", "data:image/png;base64," + base64.b64encode(b"just some text").decode()],
)
def test_an_undecodable_image_is_refused_before_sending(live: StubServer, stream: bool, url: str) -> None:
    """ipyllm reads every data URL before sending, so the provider's 400 (below) is never paid for."""
    messages = asking(text("Describe"), {"type": "image_url", "image_url": {"url": url}})
    with pytest.raises(ipyllm.InvalidInputError) as caught:
        ipyllm.complete(messages, stream=stream)
    said = str(caught.value)
    assert "\n" not in said and "base64," not in said
    assert said.startswith("image 1 (message 0) cannot be decoded: send PNG, JPEG, GIF or WebP bytes")
    assert live.requests == [], "nothing is sent"
    assert len(ipyllm.usage()) == 0, "and nothing is recorded"


def test_the_400_in_openais_form(stub: StubServer) -> None:
    good = figure_image()
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}  # base64, but not an image
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [text("a"), good.part(), bad]}],
    }
    for streamed in (False, True):
        status, payload = post(stub, {**body, "stream": streamed})
        assert status == 400
        assert payload == {
            "error": {
                "message": "Invalid image data in message 1, part 2: the image could not be decoded. Send a PNG, JPEG, GIF or WebP.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_image_format",
            }
        }
    assert len(stub.requests) == 2 and all(r.path == "/v1/chat/completions" for r in stub.requests)
    broken_file = {"type": "file", "file": {"file_data": "data:application/pdf;base64,%%%"}}
    status, payload = post(stub, {"model": "gpt-4o-mini", "messages": asking(broken_file)})
    assert status == 400 and payload["error"]["code"] == "invalid_file_format"
    assert payload["error"]["message"].startswith("Invalid file data in message 0, part 0")


def test_a_batch_line_with_an_undecodable_image_fails_alone(stub: StubServer) -> None:
    # The Batches API answers each line with _answer_line (test_testing_batches.py).
    good = figure_image()
    answer = stub._answer_line("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": asking(text("x"), good.part())})
    assert answer[0] == 200 and answer[1]["choices"][0]["message"]["content"] == "[gpt-4o-mini] x [image 640×480]"
    bad = {"model": "gpt-4o-mini", "messages": asking({"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}})}
    status, payload = stub._answer_line("/v1/chat/completions", bad)
    assert status == 400 and payload["error"]["code"] == "invalid_image_format"


def test_other_image_formats_are_read_from_their_headers(live: StubServer) -> None:
    import PIL.Image

    picture = PIL.Image.new("RGB", (300, 200), "teal")
    for fmt, mime in (("JPEG", "image/jpeg"), ("GIF", "image/gif")):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        url = f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"
        reply = ipyllm.complete(asking(text("see"), {"type": "image_url", "image_url": {"url": url}}))
        assert str(reply) == "[gpt-4o-mini] see [image 300×200]", fmt
        assert reply.usage.prompt_tokens == TURNS + 1 + image_tokens(300, 200) == TURNS + 1 + 255
