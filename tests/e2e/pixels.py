"""Read a Chromium screenshot (PNG) in plain Python, to tell a drawn chart from an empty one.

A chart's series are drawn in their own colours (the axes, grid and labels are grey), so the
pixels close to a series colour say whether that series was drawn, and the columns they fill
say how much of the plot it covers. A blank canvas, a chart that threw half-way, or one that
printed "no data" has none.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Image:
    width: int
    height: int
    channels: int
    rows: list[bytes]  # unfiltered scanlines

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.channels
        row = self.rows[y]
        return row[i], row[i + 1], row[i + 2]


def decode_png(data: bytes) -> Image:
    """8-bit RGB or RGBA, not interlaced: what Chromium writes for a screenshot."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG: depth {depth} colour {color}"
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytearray, up: bytearray, bpp: int) -> None:
    n = len(line)
    if kind == 0:
        return
    if kind == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:
        for i in range(n):
            line[i] = (line[i] + up[i]) & 0xFF
    elif kind == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + up[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = up[i]
            c = up[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    else:
        raise ValueError(f"bad PNG filter {kind}")


def hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


@dataclass
class Ink:
    pixels: int  # pixels of the colour
    columns: int  # distinct x columns holding at least one
    plot_columns: int  # columns of the region looked at


def ink(image: Image, colour: str, left: int = 0, tolerance: int = 40) -> Ink:
    """How much of ``colour`` the image holds right of ``left`` (the y axis and its labels)."""
    want = hex_rgb(colour)
    pixels, columns = 0, set()
    for y in range(image.height):
        for x in range(left, image.width):
            r, g, b = image.pixel(x, y)
            if abs(r - want[0]) <= tolerance and abs(g - want[1]) <= tolerance and abs(b - want[2]) <= tolerance:
                pixels += 1
                columns.add(x)
    return Ink(pixels, len(columns), max(0, image.width - left))


def variance(image: Image, left: int = 0) -> float:
    """The variance of the grey level right of ``left``: 0 for a uniform (empty) region."""
    values = [sum(image.pixel(x, y)) / 3 for y in range(image.height) for x in range(left, image.width)]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)
