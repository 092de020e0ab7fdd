"""Notebook objects as message parts (``ipyllm._parts``): images from figures, PIL images, arrays, bytes, paths and
IPython's ``Image``; sizes from header bytes checked against PIL's own; PDFs and text files; tables within a token
budget counted independently; OpenAI's image tokens by hand; provider limits; labels and scrubbed data URLs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import PIL.features
import PIL.Image
import pytest
from matplotlib.figure import Figure

from ipyllm import _imagefit, _parts
from ipyllm._imagefit import Limits, fit_images
from ipyllm._parts import (
    File,
    Image,
    as_file,
    as_image,
    content_label,
    count_images,
    count_text_tokens,
    image_size,
    image_tokens,
    scrub_data_urls,
    table_text,
    text_file,
)
from ipyllm.errors import InvalidInputError

HAS_WEBP = PIL.features.check("webp")


def encode(picture: PIL.Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> PIL.Image.Image:
    """A picture with content (a flat one would hide a swapped width and height in nothing)."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, axis=1)
    rgb = np.stack([x, y, (x // 2 + y // 2)], axis=2)
    return PIL.Image.fromarray(rgb).convert(mode)


def noise(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def decoded_size(data: bytes) -> tuple[int, int]:
    with PIL.Image.open(io.BytesIO(data)) as picture:
        return picture.size


# -- sizes from header bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "options"),
    [
        ("PNG", "image/png", {}),
        ("JPEG", "image/jpeg", {}),
        ("JPEG", "image/jpeg", {"progressive": True}),  # SOF2, not SOF0
        ("GIF", "image/gif", {}),
        pytest.param("WEBP", "image/webp", {"quality": 80}, marks=pytest.mark.skipif(not HAS_WEBP, reason="no WebP")),  # VP8
        pytest.param("WEBP", "image/webp", {"lossless": True}, marks=pytest.mark.skipif(not HAS_WEBP, reason="no WebP")),  # VP8L
    ],
)
@pytest.mark.parametrize(("width", "height"), [(640, 480), (37, 301), (1, 1)])
def test_image_size_reads_each_format_as_pil_does(fmt: str, mime: str, options: dict[str, Any], width: int, height: int) -> None:
    data = encode(gradient(width, height), fmt, **options)
    assert decoded_size(data) == (width, height)
    assert image_size(data) == (mime, width, height)


@pytest.mark.skipif(not HAS_WEBP, reason="no WebP")
def test_image_size_reads_an_extended_webp() -> None:
    data = encode(gradient(300, 200, "RGBA"), "WEBP", quality=80, exif=b"Exif\x00\x00" + b"\x00" * 64)  # VP8X: alpha and EXIF
    assert data[12:16] == b"VP8X"
    assert image_size(data) == ("image/webp", 300, 200)


def test_image_size_finds_a_jpeg_frame_after_a_large_exif_block() -> None:
    data = encode(gradient(123, 45), "JPEG", exif=b"Exif\x00\x00" + bytes(60_000))
    assert data.index(b"\xff\xc0") > 60_000
    assert image_size(data) == ("image/jpeg", 123, 45)
    assert image_size(bytearray(data)) == ("image/jpeg", 123, 45)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world",
        b"%PDF-1.7 ...",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # cut in its size
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + bytes(8),  # 0×0
        b"GIF89a\x10",
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # a JPEG cut before its frame header
        b"\xff\xd8\xff\xda\x00\x08",  # a scan before any frame header
        b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # no start code
    ],
)
def test_image_size_refuses_what_is_not_a_whole_header(data: bytes) -> None:
    assert image_size(data) is None


def test_image_size_refuses_truncated_images_of_every_format() -> None:
    for fmt in ("PNG", "JPEG", "GIF", *(["WEBP"] if HAS_WEBP else [])):
        data = encode(gradient(50, 40), fmt)
        assert image_size(data[:8]) is None, fmt


# -- notebook values as images -------------------------------------------------------------------------------


def test_a_figure_is_a_png_of_its_size_in_inches_times_its_dpi() -> None:
    figure = Figure(figsize=(6.4, 4.8))
    figure.add_subplot().plot([1, 3, 2])
    image = as_image(figure)
    assert image is not None and image.mime == "image/png"
    assert (image.width, image.height) == (640, 480) == decoded_size(image.data)
    assert image.label == "[image 640×480]"


def test_a_high_dpi_figure_is_capped_and_an_axes_gives_its_figure() -> None:
    figure = Figure(figsize=(6.4, 4.8), dpi=300)
    axes = figure.add_subplot()
    axes.bar(["a", "b"], [1, 2])
    image = as_image(figure)
    assert image is not None and decoded_size(image.data) == (960, 720) == (image.width, image.height)
    assert as_image(figure, dpi_cap=50) == Image(as_image(figure, dpi_cap=50).data, "image/png", 320, 240)  # type: ignore[union-attr]
    from_axes = as_image(axes)
    assert from_axes is not None and (from_axes.width, from_axes.height) == (960, 720)
    assert figure.dpi == 300, "rendering leaves the figure as it was"


def test_pil_images_are_sent_as_png_whatever_their_mode() -> None:
    for mode in ("RGB", "RGBA", "L", "P", "CMYK", "1"):
        picture = gradient(64, 32, mode)
        image = as_image(picture)
        assert image is not None and image.mime == "image/png", mode
        assert (image.width, image.height) == (64, 32) == decoded_size(image.data), mode
    with PIL.Image.open(io.BytesIO(encode(gradient(64, 32), "PNG"))) as reopened:
        assert np.array_equal(np.asarray(reopened), np.asarray(gradient(64, 32))), "PNG keeps every pixel"


def test_uint8_arrays_are_images_and_other_arrays_are_not() -> None:
    rgb = np.asarray(gradient(30, 20))
    for array in (rgb, np.dstack([rgb, np.full((20, 30), 255, np.uint8)]), rgb[:, :, 0], rgb[:, ::2]):
        image = as_image(array)
        assert image is not None and (image.height, image.width) == array.shape[:2] == decoded_size(image.data)[::-1]
    assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(as_image(rgb).data))), rgb)  # type: ignore[union-attr]
    for array in (rgb.astype(float), np.arange(10, dtype=np.uint8), rgb[:, :, :2], np.zeros((0, 4, 3), np.uint8), np.int64(5)):
        assert as_image(array) is None


def test_image_bytes_are_sent_as_they_are() -> None:
    for fmt in ("PNG", "JPEG", "GIF", *(["WEBP"] if HAS_WEBP else [])):
        data = encode(gradient(40, 30), fmt)
        for value in (data, bytearray(data), memoryview(data)):
            image = as_image(value)
            assert image is not None and image.data == data and (image.width, image.height) == (40, 30), fmt
    assert as_image(b"just some text") is None
    assert as_image(b"%PDF-1.4") is None


def test_paths(tmp_path: Path) -> None:
    png = encode(gradient(12, 34), "PNG")
    (tmp_path / "plot.png").write_bytes(png)
    image = as_image(tmp_path / "plot.png")
    assert image is not None and image.data == png and (image.width, image.height) == (12, 34)
    gradient(20, 10).save(tmp_path / "scan.bmp")  # a format providers do not take: sent as PNG
    bmp = as_image(tmp_path / "scan.bmp")
    assert bmp is not None and bmp.mime == "image/png" and decoded_size(bmp.data) == (20, 10)
    (tmp_path / "notes.txt").write_text("not an image")
    assert as_image(tmp_path / "notes.txt") is None
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InvalidInputError, match=r"broken\.png is not a PNG, JPEG, GIF or WebP image") as error:
        as_image(tmp_path / "broken.png")
    assert "\n" not in str(error.value)
    with pytest.raises(InvalidInputError, match=r"^no such file: .*missing\.png"):
        as_image(tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match="is a directory"):
        as_image(tmp_path)


def test_ipython_images() -> None:
    from IPython.display import Image as IPythonImage

    png = encode(gradient(16, 8), "PNG")
    image = as_image(IPythonImage(data=png))
    assert image is not None and image.data == png and image.label == "[image 16×8]"
    assert as_image(IPythonImage(url="https://example.com/cat.png")) is None, "a URL is sent as a URL"


@pytest.mark.parametrize("value", ["a string", 42, 3.5, None, [1, 2], {"a": 1}, Path, pd.DataFrame({"a": [1]}), pd.Series([1])])
def test_what_is_not_image_like_is_none(value: Any) -> None:
    assert as_image(value) is None


def test_telling_a_value_apart_imports_nothing(tmp_path: Path) -> None:
    code = (
        "import sys; from ipyllm._parts import as_image, as_file, content_label; "
        "png = bytes.fromhex('89504e470d0a1a0a0000000d494844520000000200000003'); "
        "assert as_image('text') is None and as_image(png).label == '[image 2×3]' and as_file(b'%PDF-1') is not None; "
        "print(sorted(m for m in ('PIL', 'numpy', 'matplotlib', 'pandas', 'tiktoken', 'litellm', 'IPython') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout
    assert out.strip() == "[]"


def test_an_image_as_a_part() -> None:
    png = encode(gradient(4, 2), "PNG")
    image = as_image(png)
    assert image is not None
    assert image.url == "data:image/png;base64," + base64.b64encode(png).decode()
    assert image.digest == __import__("hashlib").sha256(png).hexdigest()
    assert image.part() == {"type": "image_url", "image_url": {"url": image.url}}
    assert image.part("auto") == image.part()
    assert image.part("low") == {"type": "image_url", "image_url": {"url": image.url, "detail": "low"}}


# -- files ---------------------------------------------------------------------------------------------------


def test_pdfs_are_files(tmp_path: Path) -> None:
    pdf = b"%PDF-1.7\n" + bytes(1_200_000)
    (tmp_path / "report.pdf").write_bytes(pdf)
    file = as_file(tmp_path / "report.pdf")
    assert file == File(pdf, "application/pdf", "report.pdf")
    assert file.label == "[file report.pdf, 1.2 MB]"
    assert file.part() == {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64," + base64.b64encode(pdf).decode(), "filename": "report.pdf"},
    }
    anonymous = as_file(b"%PDF-1.4" + bytes(11_992))
    assert anonymous is not None and anonymous.label == "[file application/pdf, 12 kB]"
    assert "filename" not in anonymous.part()["file"]
    assert File(b"%PDF-", "application/pdf", None).label == "[file application/pdf, 5 bytes]"
    assert as_file(b"plain bytes") is None and as_file("report.pdf") is None
    (tmp_path / "notes.txt").write_text("text")
    assert as_file(tmp_path / "notes.txt") is None
    (tmp_path / "fake.pdf").write_text("not a pdf")
    with pytest.raises(InvalidInputError, match=r"fake\.pdf is not a PDF"):
        as_file(tmp_path / "fake.pdf")
    with pytest.raises(InvalidInputError, match=r"^no such file"):
        as_file(tmp_path / "gone.pdf")


def test_text_files(tmp_path: Path) -> None:
    (tmp_path / "name.txt").write_text("première ligne\nsecond line\n", encoding="utf-8")
    assert text_file(tmp_path / "name.txt") == "File name.txt:\npremière ligne\nsecond line\n"
    (tmp_path / "data.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(InvalidInputError, match=r"data\.bin is a binary file"):
        text_file(tmp_path / "data.bin")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"latin\.txt is not UTF-8 text \(byte 3"):
        text_file(tmp_path / "latin.txt")
    with pytest.raises(InvalidInputError, match=r"^no such file"):
        text_file(tmp_path / "none.txt")


# -- tables and tokens ---------------------------------------------------------------------------------------


def cl100k() -> Any:
    """The encoding litellm's ``token_counter`` uses for a model it does not know, from litellm itself (its import
    takes seconds): the independent count that the budget is checked against."""
    from litellm.litellm_core_utils.default_encoding import encoding

    assert encoding.name == "cl100k_base"
    return encoding


def test_text_tokens_are_cl100k() -> None:
    encoding = cl100k()
    for text in ("hello world", "DataFrame, 100,000 rows × 3 columns", "0,0.636962,0.269787\n", "日本語のテキスト"):
        assert count_text_tokens(text) == len(encoding.encode(text)), text
    assert count_text_tokens("hello world") == 2
    assert count_text_tokens("<|endoftext|>") > 1, "special tokens in user text are text"


def test_without_tiktoken_the_count_is_conservative(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipyllm import _tables

    monkeypatch.setattr(_tables, "_encoding", lambda: None)
    assert count_text_tokens("hello world") == len(b"hello world") // 2 + 1 == 6


def test_a_large_frame_keeps_head_and_tail_rows_within_the_budget() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.random((100_000, 10)), columns=[f"c{i}" for i in range(10)])
    frame.index.name = "row"
    count_text_tokens("warm")  # the encoding's first load is not the table's time
    started = time.perf_counter()
    text = table_text(frame, budget=2000)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, elapsed
    assert len(cl100k().encode(text)) <= 2000
    lines = text.split("\n")
    dtypes = ", ".join(f"c{i}: float64" for i in range(10))
    assert lines[0] == f"DataFrame, 100,000 rows × 10 columns ({dtypes}):"
    assert lines[1] == "row," + ",".join(f"c{i}" for i in range(10))
    gap = next(i for i, line in enumerate(lines) if line.startswith("… "))
    head, tail = lines[2:gap], lines[gap + 1 :]
    assert [int(line.split(",")[0]) for line in head] == list(range(len(head)))
    assert [int(line.split(",")[0]) for line in tail] == list(range(100_000 - len(tail), 100_000))
    assert len(head) - len(tail) in (0, 1) and len(head) > 10
    assert lines[gap] == f"… {100_000 - len(head) - len(tail):,} rows left out …"
    # The most rows that fit: one more would not.
    longer = table_text(frame, budget=2000 + 200)
    assert longer.count("\n") > text.count("\n")


def test_a_small_frame_is_kept_whole() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 1 / 3], "c": ["x", "y, z"]}, index=pd.Index(["p", "q"], name="key"))
    strings = frame.dtypes["c"]  # object before pandas 3, str since
    assert table_text(frame) == (
        f'DataFrame, 2 rows × 3 columns (a: int64, b: float64, c: {strings}):\nkey,a,b,c\np,1,0.5,x\nq,2,0.333333,"y, z"'
    )
    one = pd.DataFrame({"only": [7]})
    assert table_text(one) == "DataFrame, 1 row × 1 column (only: int64):\n,only\n0,7"


def test_series() -> None:
    named = pd.Series(np.arange(1000, dtype=float), name="price")
    text = table_text(named, budget=200)
    assert text.startswith("Series 'price', 1,000 rows, dtype float64:\n,price\n0,0\n1,1\n")
    assert text.endswith("\n999,999") and " rows left out …" in text
    assert count_text_tokens(text) <= 200
    assert table_text(pd.Series([1.5, 2.5])) == "Series, 2 rows, dtype float64:\n0,1.5\n1,2.5"


def test_a_budget_smaller_than_the_first_line() -> None:
    frame = pd.DataFrame({"a": range(5000)})
    assert table_text(frame, budget=5) == "DataFrame, 5,000 rows × 1 column (a: int64):\n… all 5,000 rows left out …"
    assert table_text(frame.head(3), budget=5) == "DataFrame, 3 rows × 1 column (a: int64):\n… all 3 rows left out …"


def test_a_few_wide_rows_over_the_budget() -> None:
    frame = pd.DataFrame({"text": [" ".join(["word"] * 300)] * 5})
    text = table_text(frame, budget=700)
    assert count_text_tokens(text) <= 700
    assert "… 3 rows left out …" in text, text[-200:]


# -- image tokens and provider limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "detail", "tokens"),
    [
        (1024, 1024, "high", 85 + 170 * 4),  # 768×768: 2×2 tiles
        (1024, 1024, "auto", 765),
        (1024, 1024, None, 765),
        (2048, 4096, "high", 85 + 170 * 6),  # 1024×2048, then 768×1536: 2×3 tiles
        (4096, 8192, "high", 1105),
        (512, 512, "high", 85 + 170),  # not upscaled
        (513, 100, "high", 85 + 170 * 2),
        (100, 100, "high", 255),
        (4000, 3000, "low", 85),
        (3000, 700, "high", 85 + 170 * 4),  # 2048×477: 4×1 tiles
    ],
)
def test_image_tokens_follow_openais_tiles(width: int, height: int, detail: str | None, tokens: int) -> None:
    assert image_tokens(width, height, detail) == tokens


def test_image_tokens_with_other_rates() -> None:
    assert image_tokens(1024, 1024, "high", base=65, tile=129) == 65 + 129 * 4
    with pytest.raises(InvalidInputError, match="image detail 'medium'"):
        image_tokens(10, 10, "medium")


def test_images_within_the_limits_are_left_alone() -> None:
    image = as_image(encode(gradient(800, 600), "PNG"))
    assert image is not None
    assert fit_images([image, image], "openai") == ([image, image], [])


def test_a_large_image_is_downscaled_with_a_note() -> None:
    big = as_image(encode(gradient(4096, 2731), "PNG"))
    small = as_image(encode(gradient(100, 100), "PNG"))
    assert big is not None and small is not None
    fitted, notes = fit_images([small, big], "openai")
    assert fitted[0] is small
    assert (fitted[1].width, fitted[1].height) == (2048, 1366) == decoded_size(fitted[1].data)
    assert fitted[1].mime == "image/png"
    assert notes == [
        f"image 2 (4096×2731, {_parts.size_text(len(big.data))}) was downscaled to 2048×1366 "
        f"({_parts.size_text(len(fitted[1].data))}) to fit openai's limits"
    ]
    same, none = fit_images([big], "anthropic")  # 8000 px a side
    assert same == [big] and none == []


def test_an_image_over_the_byte_limit_is_re_encoded() -> None:
    heavy = as_image(noise(1500, 1500))
    assert heavy is not None and len(heavy.data) * 4 / 3 > 5_000_000
    fitted, notes = fit_images([heavy], "anthropic")
    assert fitted[0].mime == "image/jpeg" and len(fitted[0].data) * 4 / 3 <= 5_000_000
    assert decoded_size(fitted[0].data) == (fitted[0].width, fitted[0].height)
    assert notes[0].startswith(f"image 1 (1500×1500, {_parts.size_text(len(heavy.data))}) was ")
    assert notes[0].endswith("to fit anthropic's limits") and "JPEG" in notes[0]
    bedrock, _ = fit_images([heavy], "bedrock")
    assert len(bedrock[0].data) * 4 / 3 <= 5_000_000, "Claude on Bedrock has Anthropic's limits"


def test_a_transparent_image_stays_png_and_shrinks() -> None:
    rgba = noise(1100, 1100).convert("RGBA")
    rgba.putalpha(128)
    heavy = as_image(rgba)
    assert heavy is not None
    fitted, notes = fit_images([heavy], "anthropic")
    assert fitted[0].mime == "image/png" and fitted[0].width < 1100 and "downscaled to" in notes[0]
    assert len(fitted[0].data) * 4 / 3 <= 5_000_000 and PIL.Image.open(io.BytesIO(fitted[0].data)).mode == "RGBA"


def test_too_many_images_or_one_that_cannot_fit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = as_image(encode(gradient(8, 8), "PNG"))
    assert tiny is not None
    with pytest.raises(InvalidInputError, match=r"^101 images is more than anthropic's limit of 100 per request: send at most 100$"):
        fit_images([tiny] * 101, "anthropic")
    assert len(fit_images([tiny] * 101, "gemini")[0]) == 101
    monkeypatch.setitem(_imagefit.LIMITS, "default", Limits(max_bytes=100, max_side=8000, max_images=100))
    heavy = as_image(noise(300, 300))
    assert heavy is not None
    with pytest.raises(InvalidInputError, match=r"^image 1 \(300×300, .*\) cannot be brought within the usual limits"):
        fit_images([heavy], None)


# -- messages as text ----------------------------------------------------------------------------------------


def test_count_images() -> None:
    png = as_image(encode(gradient(8, 8), "PNG"))
    assert png is not None
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, png.part(), png.part("low")]},
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None},
    ]
    assert count_images(messages) == 3
    assert count_images([]) == 0


def test_content_labels_never_show_base64() -> None:
    figure = Figure(figsize=(6.4, 4.8))
    image = as_image(figure)
    assert image is not None
    pdf = File(b"%PDF-1.7" + bytes(1992), "application/pdf", "report.pdf")
    content = [{"type": "text", "text": "Describe "}, image.part(), {"type": "text", "text": " and compare with"}, pdf.part()]
    assert content_label(content) == "Describe [image 640×480] and compare with [file report.pdf, 2 kB]"
    assert content_label("plain") == "plain" and content_label(None) == ""
    assert content_label([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]) == "[image https://example.com/a.png]"
    assert content_label([{"type": "image_url", "image_url": "data:image/png;base64,bm90IGFuIGltYWdl"}]) == "[image]"
    jpeg = encode(gradient(77, 33), "JPEG", exif=b"Exif\x00\x00" + bytes(60_000))
    anthropic = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": base64.b64encode(jpeg).decode()}}
    assert content_label(["see", anthropic]) == "see [image 77×33]"
    assert content_label([{"type": "file", "file": {"file_id": "file-abc"}}]) == "[file file-abc]"
    assert "base64" not in content_label(content) and "base64" not in content_label({"weird": image.url})


def test_data_urls_are_scrubbed() -> None:
    image = as_image(encode(gradient(30, 30), "PNG"))
    assert image is not None
    line = f"request failed: {json.dumps({'messages': [{'content': [image.part()]}]})}"
    scrubbed = {"messages": [{"content": [{"type": "image_url", "image_url": {"url": "[image data]"}}]}]}
    assert scrub_data_urls(line) == f"request failed: {json.dumps(scrubbed)}"
    assert scrub_data_urls("file data:application/pdf;base64,JVBERi0xLjc= end") == "file [data] end"
    assert scrub_data_urls("data:image/jpeg;name=x.jpg;base64,/9j/4AAQ") == "[image data]"
    bare = base64.b64encode(bytes(range(256)) * 2).decode()
    assert scrub_data_urls(f"payload {bare} done") == "payload [data] done"
    assert scrub_data_urls("short base64 aGVsbG8= stays, and so do words") == "short base64 aGVsbG8= stays, and so do words"
