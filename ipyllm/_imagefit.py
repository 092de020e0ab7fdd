"""Images brought within a provider's limits before anything is sent (``fit_images``): downscaled to the long side it
takes, re-encoded (PNG optimised, then JPEG when opaque) and downscaled further until the bytes fit, with one note
for each image changed. The limits by provider are ``LIMITS``. PIL is imported only when an image must change.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipyllm._parts import Image, size_text
from ipyllm.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["LIMITS", "Limits", "fit_images"]


@dataclass(frozen=True)
class Limits:
    """What a provider takes: the most bytes of one image (as sent: base64, 4/3 of its bytes), the most pixels on
    its long side, the most images in one request."""

    max_bytes: int
    max_side: int
    max_images: int


#: Limits by litellm provider, from the providers' documentation (early 2025). OpenAI takes up to 20 MB and scales
#: to 2048×2048 anyway, so a larger side is sent for nothing; Anthropic refuses more than 5 MB or 8000 px (Claude on
#: Bedrock too); Gemini scales to 3072×3072 and takes up to 3000 images; other providers get the common limits.
LIMITS: dict[str, Limits] = {
    "openai": Limits(20_000_000, 2048, 500),
    "anthropic": Limits(5_000_000, 8000, 100),
    "gemini": Limits(20_000_000, 3072, 3000),
    "default": Limits(20_000_000, 8000, 100),
}
_PROVIDER_LIMITS = {"azure": "openai", "text-completion-openai": "openai", "bedrock": "anthropic", "vertex_ai": "gemini"}


def _limits(provider: str | None) -> tuple[str, Limits]:
    """The provider's name as notes say it, and its limits."""
    if not provider:
        return "the usual", LIMITS["default"]
    key = provider if provider in LIMITS else _PROVIDER_LIMITS.get(provider.removesuffix("_beta"), "default")
    return f"{provider}'s", LIMITS[key]


def _sent_size(data: bytes) -> int:
    return 4 * math.ceil(len(data) / 3)


def _opaque(picture: PILImage) -> PILImage | None:
    """The picture as RGB when it has no transparency that JPEG would lose; None when it has."""
    if picture.mode in ("RGB", "L"):
        return picture
    rgba = picture.convert("RGBA")
    return rgba.convert("RGB") if rgba.getchannel("A").getextrema() == (255, 255) else None


def _encodings(picture: PILImage, mime: str) -> Iterator[tuple[str, bytes]]:
    """The picture as PNG, then as an optimised PNG, then as JPEG at falling quality when it is opaque (a JPEG only
    as JPEG: a photo stays a photo), each made only when the one before did not fit."""
    rgb = _opaque(picture)
    if not (mime == "image/jpeg" and rgb is not None):
        for optimize in (False, True):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", optimize=optimize)
            yield "image/png", buffer.getvalue()
    if rgb is not None:
        for quality in (85, 60):
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=quality)
            yield "image/jpeg", buffer.getvalue()


def _fit(image: Image, limits: Limits) -> Image | None:
    """The image within the limits: downscaled to the long side, re-encoded, downscaled further; None if it cannot."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(image.data)) as opened:
            opened.load()
            picture: PILImage = opened.copy()
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return None
    side = min(limits.max_side, max(picture.size))
    while side >= 64:
        scale = side / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        scaled = picture.resize(size, PIL.Image.Resampling.LANCZOS, reducing_gap=3.0) if size != picture.size else picture
        smallest = math.inf
        for mime, data in _encodings(scaled, image.mime):
            if _sent_size(data) <= limits.max_bytes:
                return Image(data, mime, *scaled.size)
            smallest = min(smallest, _sent_size(data))
        # The bytes go with the pixels: scale the side by the square root of how far over the smallest encoding is.
        side = int(side * min(0.9, 0.95 * math.sqrt(limits.max_bytes / smallest)))
    return None


def fit_images(images: list[Image], provider: str | None) -> tuple[list[Image], list[str]]:
    """The images brought within the provider's limits (``LIMITS``), and one note for each image changed.

    An image whose long side is over the limit is downscaled (aspect kept, LANCZOS); one over the byte limit is
    re-encoded (PNG optimised, then JPEG at quality 85 and 60 when it is opaque) and downscaled further until it
    fits. Images within the limits are returned as they are.

    Raises
    ------
    InvalidInputError
        More images than the provider takes in one request, or an image that cannot be made to fit.
    """
    whose, limits = _limits(provider)
    if len(images) > limits.max_images:
        raise InvalidInputError(
            f"{len(images)} images is more than {whose} limit of {limits.max_images} per request: send at most {limits.max_images}"
        )
    fitted: list[Image] = []
    notes: list[str] = []
    for number, image in enumerate(images, start=1):
        if max(image.width, image.height) <= limits.max_side and _sent_size(image.data) <= limits.max_bytes:
            fitted.append(image)
            continue
        smaller = _fit(image, limits)
        if smaller is None:
            raise InvalidInputError(
                f"image {number} ({image.width}×{image.height}, {size_text(len(image.data))}) cannot be brought within {whose} "
                f"limits ({size_text(limits.max_bytes)}, {limits.max_side} px a side): send a smaller image"
            )
        resized = (smaller.width, smaller.height) != (image.width, image.height)
        recoded = smaller.mime != image.mime and smaller.mime == "image/jpeg"
        how = (
            " and ".join(
                [*([f"downscaled to {smaller.width}×{smaller.height}"] if resized else []), *(["re-encoded as JPEG"] if recoded else [])]
            )
            or "re-encoded"
        )
        notes.append(
            f"image {number} ({image.width}×{image.height}, {size_text(len(image.data))}) was {how} "
            f"({size_text(len(smaller.data))}) to fit {whose} limits"
        )
        fitted.append(smaller)
    return fitted, notes
