"""Image sizes read from their first bytes (PNG, JPEG, GIF, WebP), without decoding the image or importing PIL:
what a label, a token estimate or the stub server needs of an image is its size, and a JPEG's or a PNG's header
gives it in a few hundred bytes.
"""

from __future__ import annotations

import struct

__all__ = ["image_size"]


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(mime, width, height) read from the header of PNG, JPEG (its SOFn marker), GIF or WebP (VP8, VP8L, VP8X)
    bytes, without PIL; None if they are none of these, or the header is truncated or corrupt."""
    data = data if isinstance(data, bytes) else bytes(data)
    found: tuple[str, int, int] | None
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            if data[12:16] != b"IHDR":
                return None
            width, height = struct.unpack(">II", data[16:24])
            found = ("image/png", width, height)
        elif data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            found = ("image/gif", width, height)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            found = _webp_size(data)
        elif data[:3] == b"\xff\xd8\xff":
            found = _jpeg_size(data)
        else:
            return None
    except struct.error:  # truncated
        return None
    if found is None or found[1] <= 0 or found[2] <= 0:
        return None
    return found


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return "image/webp", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: a signature byte, then width-1 and height-1 in 14 bits each
        if data[20:21] != b"\x2f":
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return "image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas's width-1 and height-1 in 24 bits each
        if len(data) < 30:
            return None
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return "image/webp", width, height
    return None


# Start-of-frame markers: C0-CF but C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding conditions).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length: TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    index = 2
    while index < len(data):
        if data[index] != 0xFF:
            return None
        while index < len(data) and data[index] == 0xFF:  # fill bytes
            index += 1
        if index >= len(data):
            return None
        marker = data[index]
        index += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # the image ended, or its scan began, before a frame header
            return None
        (length,) = struct.unpack(">H", data[index : index + 2])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[index + 3 : index + 7])
            return "image/jpeg", width, height
        if length < 2:
            return None
        index += length
    return None
