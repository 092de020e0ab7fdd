"""Notebook objects as OpenAI-style message parts: figures, images, arrays and image bytes as image parts, PDFs as
file parts, text files and tables as text; their sizes, their tokens, their labels for display, and data URLs kept
out of every log line.

An image is sent as its encoded bytes (``Image``): a matplotlib figure rendered to PNG at its own dpi (capped, so a
300 dpi figure does not cost four times the tokens of the same figure on screen), a PIL image or a uint8 array
encoded as PNG, PNG/JPEG/GIF/WebP bytes or files as they are. ``image_size`` reads a size from the header bytes
alone, so a label, a token estimate or the stub server never decodes a whole image. ``_imagefit.fit_images`` brings
images within a provider's limits before anything is sent, saying what it changed.

A DataFrame or Series becomes CSV (``table_text``): of the plain-text forms it takes the fewest tokens (no padding,
no repeated keys as in JSON records, no rule lines as in Markdown), and every model reads it. When the whole table
would not fit the token budget, the head and tail rows that fit are kept with one line saying how many were left
out; the rows are counted by binary search over rendered slices, never by rendering the whole frame. Floats are
written with ``pandas.options.display.precision`` significant digits, as a notebook shows them.

Tokens of a text are counted with tiktoken's ``cl100k_base`` (``count_text_tokens``), the encoding litellm's
``token_counter`` uses for models it does not know, read from the copy litellm ships, without importing litellm
(its import takes seconds). An image's tokens follow OpenAI's tile formula (``image_tokens``).

PIL, numpy, matplotlib, pandas and tiktoken are imported inside the functions that need them, and a value's kind
is told by its class's module before any of them is imported: ``import ipyllm`` stays instant, and a user who
never imported numpy does not import it by interpolating a string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipyllm._imagesize import image_size
from ipyllm._tables import count_text_tokens, table_text
from ipyllm.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "DATA_URL",
    "File",
    "Image",
    "as_file",
    "as_image",
    "content_label",
    "count_images",
    "count_text_tokens",
    "image_size",
    "image_tokens",
    "join_pieces",
    "scrub_data_urls",
    "size_text",
    "table_text",
    "text_file",
]

_ACCEPTED = "a PNG, JPEG, GIF or WebP image"
#: File suffixes taken as images: a file with one of them that cannot be read is an error, not text.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ico"})


def size_text(size: int) -> str:
    """Bytes for people, in decimal units: ``512 bytes``, ``12 kB``, ``12.3 kB``, ``1.2 MB``."""
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.3g} kB"
    return f"{size / 1_000_000:.1f} MB"


@dataclass(frozen=True)
class Image:
    """An image as it is sent: its encoded bytes, their MIME type, and its size in pixels."""

    data: bytes
    mime: str
    width: int
    height: int

    @property
    def digest(self) -> str:
        """The SHA-256 of the bytes, in hex: the same image is the same part."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def url(self) -> str:
        """The image as a ``data:`` URL, as OpenAI's ``image_url`` parts carry it."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    @property
    def label(self) -> str:
        """``[image 640×480]``: the image in a text, where its bytes would be."""
        return f"[image {self.width}×{self.height}]"

    def part(self, detail: str | None = None) -> dict[str, Any]:
        """The OpenAI ``image_url`` content part; ``detail`` (``low``, ``high``) only when it is not the default."""
        image_url: dict[str, Any] = {"url": self.url}
        if detail not in (None, "auto"):
            image_url["detail"] = detail
        return {"type": "image_url", "image_url": image_url}


@dataclass(frozen=True)
class File:
    """A file sent as a ``file`` content part (a PDF): its bytes, their MIME type and its name when known."""

    data: bytes
    mime: str
    name: str | None

    @property
    def label(self) -> str:
        """``[file report.pdf, 1.2 MB]``, or ``[file application/pdf, 12 kB]`` when the name is not known."""
        return f"[file {self.name or self.mime}, {size_text(len(self.data))}]"

    def part(self) -> dict[str, Any]:
        """The ``file`` content part litellm and OpenAI take: the bytes as a data URL, the file's name when known."""
        file: dict[str, Any] = {"file_data": f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"}
        if self.name:
            file["filename"] = self.name
        return {"type": "file", "file": file}


# -- notebook values as images and files ---------------------------------------------------------------------


def _from_module(value: Any, package: str) -> bool:
    """Whether ``value``'s class comes from ``package`` (told without importing it: it is imported if it is)."""
    return package in sys.modules and type(value).__module__.split(".")[0] == package


def _png(picture: PILImage) -> Image:
    """A PIL image encoded as PNG (modes PNG cannot hold converted: CMYK, YCbCr, floats and the like)."""
    if picture.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        has_alpha = "A" in picture.getbands()
        picture = picture.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return Image(buffer.getvalue(), "image/png", picture.width, picture.height)


def _figure_png(figure: Any, dpi_cap: int) -> Image:
    # The figure's own canvas, never pyplot: rendering must not open a window or touch pyplot's current figure.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=min(float(figure.dpi), float(dpi_cap)))
    data = buffer.getvalue()
    mime, width, height = image_size(data) or ("image/png", 0, 0)
    return Image(data, mime, width, height)


def _encoded(data: bytes, where: str | None = None) -> Image | None:
    found = image_size(data)
    if found is None:
        if where is not None:
            raise InvalidInputError(f"{where} is not {_ACCEPTED} that can be read: pass one of those")
        return None
    return Image(data, *found)


def _path_bytes(path: Path) -> bytes:
    path = path.expanduser()
    if not path.exists():
        raise InvalidInputError(f"no such file: {path}; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory: give a file")
    return path.read_bytes()


def _image_file(path: Path) -> Image | None:
    data = _path_bytes(path)
    if (image := _encoded(data)) is not None:
        return image
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    # A BMP or TIFF is sent as PNG; what PIL cannot read either is an error, not text.
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(data)) as picture:
            picture.load()
            return _png(picture)
    except (PIL.Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidInputError(f"{path} is not {_ACCEPTED} that can be read: convert it, or pass another file") from None


def as_image(value: Any, *, dpi_cap: int = 150) -> Image | None:
    """The value as an image, or None when it is not image-like (it is then text).

    Parameters
    ----------
    value
        A matplotlib ``Figure`` (rendered to PNG at ``min(fig.dpi, dpi_cap)``: the PNG's size is the figure's size
        in inches times that dpi) or ``Axes`` (its figure); a PIL image (encoded as PNG); an ``IPython.display.Image``
        holding bytes (one holding only a URL gives None: the URL is sent as a URL); a uint8 numpy array of shape
        H×W, H×W×3 or H×W×4 (other arrays are text); PNG, JPEG, GIF or WebP bytes (sent as they are); a
        ``pathlib.Path`` to such a file (other image formats PIL reads are sent as PNG).
    dpi_cap
        The highest dpi a figure is rendered at.

    Raises
    ------
    InvalidInputError
        A path that does not exist, or image-looking input that cannot be read: a file with an image suffix, an
        ``IPython.display.Image``'s bytes.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encoded(bytes(value))
    if isinstance(value, Path):
        return _image_file(value)
    if _from_module(value, "matplotlib"):
        figure = value
        while not hasattr(figure, "savefig") and getattr(figure, "figure", None) not in (None, figure):
            figure = figure.figure  # an Axes, a SubFigure: up to the figure that draws them
        return _figure_png(figure, dpi_cap) if hasattr(figure, "savefig") else None
    if _from_module(value, "PIL"):
        import PIL.Image

        return _png(value) if isinstance(value, PIL.Image.Image) else None
    if _from_module(value, "IPython") and type(value).__name__ == "Image" and hasattr(value, "data"):
        data = value.data
        if not isinstance(data, (bytes, bytearray)):
            return None  # only a URL (or a path IPython could not read): sent as a URL
        return _encoded(bytes(data), "the IPython Image's data")
    if _from_module(value, "numpy"):
        return _array_png(value)
    return None


def _array_png(array: Any) -> Image | None:
    import numpy

    if not isinstance(array, numpy.ndarray) or array.dtype != numpy.uint8:
        return None
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        return None
    import PIL.Image

    return _png(PIL.Image.fromarray(numpy.ascontiguousarray(array)))


def as_file(value: Any) -> File | None:
    """A PDF as a ``File``: a ``Path`` to a ``.pdf`` (or to any file that starts as a PDF does), or bytes starting with
    ``%PDF-``; None otherwise. A ``.pdf`` path that is missing or is not a PDF raises ``InvalidInputError``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return File(data, "application/pdf", None) if data.startswith(b"%PDF-") else None
    if not isinstance(value, Path):
        return None
    if value.suffix.lower() != ".pdf" and not value.is_file():
        return None
    data = _path_bytes(value)
    if data.startswith(b"%PDF-"):
        return File(data, "application/pdf", value.name)
    if value.suffix.lower() == ".pdf":
        raise InvalidInputError(f"{value} is not a PDF (it does not start with %PDF-): pass the PDF itself")
    return None


def text_file(path: Path) -> str:
    """A text file attached with ``--file``: ``File name.txt:`` then its text (UTF-8).

    A binary or undecodable file raises ``InvalidInputError`` naming it."""
    data = _path_bytes(Path(path))
    if b"\x00" in data[:8192]:
        raise InvalidInputError(f"{path} is a binary file, not text: attach a PDF, an image, or a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): save it as UTF-8") from None
    return f"File {Path(path).name}:\n{text}"


# -- tokens and provider limits ------------------------------------------------------------------------------


def image_tokens(width: int, height: int, detail: str | None = "auto", base: int = 85, tile: int = 170) -> int:
    """An image's prompt tokens by OpenAI's tile formula.

    ``low``: ``base``. Otherwise the image is scaled (down only) to fit 2048×2048, then its shortest side to 768;
    it costs ``base + tile × ceil(w / 512) × ceil(h / 512)``: 1024×1024 is 765 tokens, 2048×4096 is 1105.
    ``auto`` and None count as ``high``, the most the provider may choose.
    """
    if detail not in (None, "auto", "low", "high"):
        raise InvalidInputError(f"image detail {detail!r} is not one of 'auto', 'low', 'high'")
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return base + tile * math.ceil(int(w) / 512) * math.ceil(int(h) / 512)


# -- message contents as text --------------------------------------------------------------------------------


#: A data URL: ``data:<mime>[;param=value...];base64,<payload>``.
DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[^;,\s\"']*)*;base64,(?P<data>[A-Za-z0-9+/_-]*={0,2})")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")


def scrub_data_urls(text: str) -> str:
    """The text with every data URL replaced by ``[image data]`` (an image's) or ``[data]``, and every bare base64
    run of 200 characters or more by ``[data]``: no image bytes reach a log line, an error or a ledger row."""
    text = DATA_URL.sub(lambda match: "[image data]" if match["mime"].startswith("image/") else "[data]", text)
    return _BASE64_RUN.sub("[data]", text)


def count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many image parts (OpenAI's ``image_url``, Anthropic's ``image``) the messages carry."""
    count = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            count += sum(1 for part in content if isinstance(part, Mapping) and part.get("type") in ("image_url", "image"))
    return count


def _head_size(payload: str) -> tuple[str, int, int] | None:
    """An image's size from the start of its base64 payload (a JPEG's frame header may follow 64 kB of EXIF)."""
    for chars in (4096, 131072):
        head = payload[:chars]
        try:
            found = image_size(base64.b64decode(head[: len(head) - len(head) % 4], validate=False))
        except (binascii.Error, ValueError):
            return None
        if found is not None or len(payload) <= chars:
            return found
    return None


def _url_label(url: str) -> str:
    match = DATA_URL.match(url)
    if match is None:
        return f"[image {url}]" if url and not url.startswith("data:") else "[image]"
    found = _head_size(match["data"])
    return f"[image {found[1]}×{found[2]}]" if found else "[image]"


def _file_label(file: Mapping[str, Any]) -> str:
    name = file.get("filename")
    match = DATA_URL.match(str(file.get("file_data") or ""))
    if match is None:
        return f"[file {name or file.get('file_id') or ''}]".replace(" ]", "]")
    payload = match["data"].rstrip("=")
    return f"[file {name or match['mime']}, {size_text(len(payload) * 3 // 4)}]"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _part_label(part: Any) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, Mapping):
        return str(part)
    kind = part.get("type")
    if kind == "text":
        return str(part.get("text", ""))
    if kind == "image_url":
        image_url = part.get("image_url")
        return _url_label(str(image_url.get("url", "") if isinstance(image_url, Mapping) else image_url or ""))
    if kind == "image":  # Anthropic's block: a base64 source or a URL
        source = _mapping(part.get("source"))
        if source.get("type") == "base64":
            found = _head_size(str(source.get("data", "")))
            return f"[image {found[1]}×{found[2]}]" if found else "[image]"
        return _url_label(str(source.get("url", "")))
    if kind == "file":
        return _file_label(_mapping(part.get("file")))
    return f"[{kind}]" if kind else ""


def join_pieces(pieces: Sequence[str]) -> str:
    """Texts joined with a space where neither side already has whitespace: ``Describe `` and ``[image 8×8]`` and
    `` please`` give ``Describe [image 8×8] please``."""
    joined = ""
    for piece in pieces:
        if not piece:
            continue
        if joined and not joined[-1].isspace() and not piece[0].isspace():
            joined += " "
        joined += piece
    return joined


def content_label(content: Any) -> str:
    """A message's content as text for display (dry runs, the chat history, saved notebooks): its text parts, each
    image as ``[image W×H]`` (read from its data URL's first bytes), ``[image <url>]`` for a remote one or
    ``[image]``, each file as ``[file name, size]``. Never base64."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return join_pieces([_part_label(part) for part in content])
    return scrub_data_urls(str(content))
