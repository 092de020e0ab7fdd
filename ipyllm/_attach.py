"""Notebook objects in prompts: what ``{fig}``, ``images=`` and ``--image`` become, and what is checked before sending.

A prompt's ``{name}`` fields (the magics' namespace, a ``map`` row) and the ``images=`` / ``files=`` of
``complete``, ``acomplete`` and ``estimate`` turn notebook objects into OpenAI-style content parts, the form
litellm translates for every provider (``ipyllm._parts`` converts one object):

- a figure, an ``Axes``, a PIL image, an ``IPython.display.Image``, an H×W×3/4 uint8 array, PNG/JPEG/GIF/WebP
  bytes, or a path to an image file (a ``Path``, or a string naming an existing ``.png``/``.jpg``/... file)
  becomes an image part (a base64 data URL);
- a PDF (its path or bytes) becomes a file part;
- a DataFrame or Series becomes a compact CSV table cut to ``table_token_budget`` tokens;
- anything else is text, as ``str.format`` writes it.

A prompt without such objects stays one string, exactly as before. Before a call with parts is sent (or
estimated), ``prepare_media`` checks it: a model that does not take images (litellm's ``supports_vision``,
or a ``prices`` entry that declares it) or PDFs (``supports_pdf_input``) is refused in one line naming
models that do; each image is brought within the provider's limits (``_imagefit.fit_images``, a one-line note
for each one changed); the session's ``image_detail`` goes on every image that has none. Nothing here sends
or displays anything, and no image bytes ever reach a message meant for the user (``shown``).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ipyllm import _parts
from ipyllm._config import Settings
from ipyllm._imagefit import fit_images
from ipyllm._notices import notice
from ipyllm._pricemap import declared, model_prices, price_map
from ipyllm.errors import InvalidInputError

__all__ = [
    "PartFormatter",
    "assemble",
    "attach",
    "fill_parts",
    "object_content",
    "prepare_media",
    "shown",
    "supports",
    "text_of",
]

Messages = list[dict[str, Any]]

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
_MARK = "\x00ipyllm-part-{}\x00"
_MARKS = re.compile("\x00ipyllm-part-(\\d+)\x00")
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4}|\d{8})$|-preview")
_ACCEPTED = "a matplotlib figure, a PIL image, an IPython Image, an H×W×3 uint8 array, PNG/JPEG/GIF/WebP bytes, a path or a URL"


# -- one object ----------------------------------------------------------------------------------------------
def _named_image_path(value: Any) -> Path | None:
    """A ``Path``, or a one-line string, naming an image file by its suffix (a string only when the file exists)."""
    if isinstance(value, Path):
        return value if value.suffix.lower() in _IMAGE_SUFFIXES else None
    if isinstance(value, str) and len(value) < 4096 and "\n" not in value and os.path.splitext(value)[1].lower() in _IMAGE_SUFFIXES:
        return Path(value) if os.path.isfile(value) else None
    return None


def _is_table(value: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, (pandas.DataFrame, pandas.Series))


def object_content(value: Any, table_budget: int) -> dict[str, Any] | str | None:
    """What ``value`` becomes in a prompt: a content part (an image, a PDF), a table's text, or None (plain text)."""
    if isinstance(value, str):
        path = _named_image_path(value)
        return None if path is None else _image_part(path)
    if isinstance(value, (int, float)) or value is None:
        return None  # the common case, decided at once
    if _is_table(value):
        # Counted with cl100k_base, which other tokenizers (o200k_base, Claude's) exceed by a few percent on digits:
        # 95 % of the budget keeps the table within it for them too.
        return _parts.table_text(value, max(1, int(table_budget * 0.95)))
    if isinstance(value, Path) and value.suffix.lower() not in _IMAGE_SUFFIXES:
        pdf = _parts.as_file(value) if value.suffix.lower() == ".pdf" else None
        return pdf.part() if pdf is not None else None
    if isinstance(value, (bytes, bytearray, memoryview)) and bytes(value[:5]) == b"%PDF-":
        pdf = _parts.as_file(bytes(value))
        return pdf.part() if pdf is not None else None
    image = _parts.as_image(value)
    return image.part() if image is not None else None


def _image_part(value: Any) -> dict[str, Any]:
    image = _parts.as_image(value)
    if image is None:
        raise InvalidInputError(f"cannot read {value} as an image: give {_ACCEPTED}")
    return image.part()


# -- templates -----------------------------------------------------------------------------------------------
class PartFormatter(string.Formatter):
    """``str.format`` whose fields may be notebook objects: each image or file becomes a part (a marker in the text
    until ``assemble``), each table its text. A field with a format spec (``{x:.2f}``) is text, as always."""

    def __init__(self, table_budget: int = 2000) -> None:
        self.table_budget = table_budget
        self.parts: list[dict[str, Any]] = []

    def format_field(self, value: Any, format_spec: str) -> Any:
        if not format_spec:
            content = object_content(value, self.table_budget)
            if isinstance(content, dict):
                self.parts.append(content)
                return _MARK.format(len(self.parts) - 1)
            if isinstance(content, str):
                return content
        return super().format_field(value, format_spec)


def assemble(text: str, parts: Sequence[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The filled template as a message's content: the text itself, or text and parts in their order."""
    if not parts:
        return text
    content: list[dict[str, Any]] = []
    pieces = _MARKS.split(text)
    for index, piece in enumerate(pieces):
        if index % 2:
            content.append(parts[int(piece)])
        elif piece.strip():
            content.append({"type": "text", "text": piece})
    return content


def fill_parts(template: str, fields: Mapping[str, Any], table_budget: int) -> str | list[dict[str, Any]]:
    """A ``map`` row's prompt: ``str.format_map`` as before, unless a field holds an object that becomes a part."""
    formatter = PartFormatter(table_budget)
    return assemble(formatter.vformat(template, (), fields), formatter.parts)


# -- images= and files= --------------------------------------------------------------------------------------
def _image_item(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, Mapping) and item.get("type") == "image_url":
        return dict(item)  # a part already
    if isinstance(item, str) and item.startswith(("http://", "https://", "data:image/")):
        return {"type": "image_url", "image_url": {"url": item}}
    if isinstance(item, str):
        if not os.path.isfile(item):
            raise InvalidInputError(f"{where}: no such file {item!r}: give {_ACCEPTED}")
        item = Path(item)
    image = _parts.as_image(item)
    if image is None:
        raise InvalidInputError(f"{where} is {type(item).__name__}, not an image: give {_ACCEPTED}")
    return image.part()


def _file_item(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, Mapping) and item.get("type") in ("file", "text"):
        return dict(item)
    if isinstance(item, str):
        item = Path(item)
    if isinstance(item, Path):
        if not item.is_file():
            raise InvalidInputError(f"{where}: no such file {str(item)!r}: give the path of a PDF or a text file")
        if item.suffix.lower() != ".pdf" and item.read_bytes()[:5] != b"%PDF-":
            return {"type": "text", "text": _parts.text_file(item)}
    pdf = _parts.as_file(item)
    if pdf is None:
        raise InvalidInputError(f"{where} is {type(item).__name__}: give the path (or bytes) of a PDF, or the path of a text file")
    return pdf.part()


def attach(prompt_or_messages: str | Sequence[Mapping[str, Any]], images: Any = None, files: Any = None) -> Any:
    """The prompt with ``images`` and ``files`` added to its last user message (after its text)."""
    if images is None and files is None:
        return prompt_or_messages
    parts = [_image_item(x, f"images[{i}]") for i, x in enumerate(_listed(images, "images"))]
    parts += [_file_item(x, f"files[{i}]") for i, x in enumerate(_listed(files, "files"))]
    if not parts:
        return prompt_or_messages
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": [{"type": "text", "text": prompt_or_messages}, *parts]}]
    messages = [dict(m) for m in prompt_or_messages]
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last is None:
        messages.append(last := {"role": "user", "content": []})
    content = last.get("content")
    last["content"] = [*_as_parts(content), *parts]
    return messages


def _listed(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, bytes, bytearray, Path)) or not isinstance(value, Sequence):
        return [value]  # one object: images=fig
    raise InvalidInputError(f"{name}= takes a list of objects, or one")


def _as_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content or [])


# -- before sending ----------------------------------------------------------------------------------------
def _image_parts(messages: Messages) -> list[tuple[Mapping[str, Any], int]]:
    """Every image part (and its message's index)."""
    found = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            found += [(part, index) for part in content if isinstance(part, Mapping) and part.get("type") == "image_url"]
    return found


def _has_files(messages: Messages) -> bool:
    return any(
        isinstance(part, Mapping) and part.get("type") == "file"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def supports(settings: Settings, model: str, capability: str) -> bool:
    """Whether the model takes images (``supports_vision``) or PDFs (``supports_pdf_input``): a ``prices`` entry's
    own word first (how a local model is declared), else litellm's model map (an alias's base model's)."""
    said = declared(model, settings.prices, capability)
    if said is not None:
        return said
    entry = model_prices(model, settings.prices)
    if entry is None and "/" in model:
        entry = model_prices(model.rsplit("/", 1)[1], settings.prices)
    return bool(entry.get(capability)) if entry is not None else False


def _provider(settings: Settings, model: str) -> str:
    entry = model_prices(model, settings.prices) or {}
    if "/" in model and not settings.base_url:
        return model.split("/", 1)[0]
    return str(entry.get("litellm_provider") or "openai")


def capable_models(provider: str, capability: str, n: int = 3) -> list[str]:
    """A few chat models of ``provider`` that litellm says have ``capability``, the cheapest first."""
    names = [
        name
        for name, entry in price_map().items()
        if isinstance(entry, dict)
        and entry.get(capability)
        and entry.get("litellm_provider") == provider
        and entry.get("mode", "chat") == "chat"
        and "/" not in name.removeprefix(f"{provider}/")
        and not _DATED.search(name)  # a dated snapshot of a model already named
    ]
    entries = price_map()

    def cheapest(name: str) -> tuple[float, int, str]:
        price = entries[name].get("input_cost_per_token")
        return (float(price) if isinstance(price, (int, float)) else math.inf, len(name), name)

    return sorted(set(names), key=cheapest)[:n]


def _refuse(settings: Settings, model: str, capability: str, what: str) -> InvalidInputError:
    provider = _provider(settings, model)
    others = capable_models(provider, capability)
    suggestion = f"use one that does, e.g. {', '.join(others)} (-m / model=)" if others else "use a model that does (-m / model=)"
    return InvalidInputError(
        f"{model} does not take {what} (litellm's {capability} is false for it): {suggestion}; for a local model that does, "
        f"declare it: prices={{{model!r}: {{..., {capability!r}: True}}}}"
    )


def prepare_media(settings: Settings, messages: Messages) -> Messages:
    """Check a call's images and files before anything is sent: the model takes them, each image fits the provider's
    limits (a note for each one changed), ``image_detail`` applied. Messages without parts come back as they are."""
    images = _image_parts(messages)
    files = _has_files(messages)
    if not images and not files:
        return messages
    model = settings.model
    if images and not supports(settings, model, "supports_vision"):
        raise _refuse(settings, model, "supports_vision", "images")
    if files and not supports(settings, model, "supports_pdf_input"):
        raise _refuse(settings, model, "supports_pdf_input", "PDF files")
    if not images:
        return messages
    decoded: list[_parts.Image | None] = []
    for number, (part, index) in enumerate(images, 1):
        url = (part.get("image_url") or {}).get("url", "") if isinstance(part.get("image_url"), Mapping) else part.get("image_url")
        if not (isinstance(url, str) and url.startswith("data:")):
            decoded.append(None)  # a URL the provider fetches
            continue
        match = _parts.DATA_URL.fullmatch(url)
        try:
            data = base64.b64decode(match["data"], validate=True) if match is not None else b""
        except (binascii.Error, ValueError):
            data = b""
        size = _parts.image_size(data)
        if size is None:
            raise InvalidInputError(
                f"image {number} (message {index}) cannot be decoded: send PNG, JPEG, GIF or WebP bytes, a figure or a PIL image"
            )
        decoded.append(_parts.Image(data, size[0], size[1], size[2]))
    fitted, notes = fit_images([image for image in decoded if image is not None], _provider(settings, model))
    for line in notes:
        notice(line)
    replaced = iter(fitted)
    new_parts: dict[int, dict[str, Any]] = {}
    for (part, _), image in zip(images, decoded, strict=True):
        detail = (part.get("image_url") or {}).get("detail") if isinstance(part.get("image_url"), Mapping) else None
        detail = detail or (settings.image_detail if settings.image_detail != "auto" else None)
        if image is None:
            new_parts[id(part)] = {"type": "image_url", "image_url": {**_url_dict(part), **({"detail": detail} if detail else {})}}
        else:
            new_parts[id(part)] = next(replaced).part(detail)
    return [
        {**message, "content": [new_parts.get(id(part), part) for part in message["content"]]}
        if isinstance(message.get("content"), list)
        else message
        for message in messages
    ]


def _url_dict(part: Mapping[str, Any]) -> dict[str, Any]:
    url = part.get("image_url")
    return dict(url) if isinstance(url, Mapping) else {"url": url}


# -- showing it ----------------------------------------------------------------------------------------------
def shown(messages: Sequence[Mapping[str, Any]]) -> Messages:
    """The messages as they may be shown or kept (a dry run, a saved notebook): each image's data URL replaced by
    ``[image W×H]``, each file's by its label; never base64."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [_shown_part(part) for part in content]
        out.append({**message, "content": content})
    return out


def _shown_part(part: Any) -> Any:
    if not isinstance(part, Mapping) or part.get("type") not in ("image_url", "file", "image"):
        return part
    return (
        {**part, part["type"]: _parts.content_label([part])} if part.get("type") in ("image_url", "file") else _parts.content_label([part])
    )


def text_of(content: Any) -> str:
    """A message's content as one text for display: text parts joined, ``[image W×H]`` for each image."""
    return content if isinstance(content, str) else _parts.content_label(content)
