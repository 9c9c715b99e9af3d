"""The hostile bodies of issue 17, built once for the tests and ``benchmarks/attack_cost.py``.

Each is small on the wire and was expensive for the server before its bound:
a deflated sequence of ~950,000 empty items (point 1), part headers made of
thousands of short lines (point 2), a million empty parts (point 3).
Nothing here imports pytest or Twisted (the benchmarks import it too).
"""

from __future__ import annotations

import struct
import zlib

from tests.helpers import build_multipart

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_REFERENCED_IMAGE_SEQUENCE = 0x00081140

EMPTY_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
# The bomb of issue 17 point 1: ~950,000 empty items inflate to 7.6 MB,
# under the 8 MiB header budget, from ~11 KB of deflate stream.
BOMB_ITEMS = 950_000


def _ui(tag: int, uid: str) -> bytes:
    """An Explicit VR Little Endian UI element, NUL-padded to even length."""
    value = uid.encode() + b"\x00" * (len(uid) % 2)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(value)) + value


def _sequence_header(tag: int) -> bytes:
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)


def item_bomb(index: int = 0, *, items: int = BOMB_ITEMS, deflate: bool = True) -> bytes:
    """A PS3.10 part whose data set opens with a sequence of ``items`` empty items.

    ``index`` makes the UIDs after the sequence distinct, so parallel bombs
    are not duplicates of each other.
    """
    data_set = (
        _sequence_header(_REFERENCED_IMAGE_SEQUENCE)
        + EMPTY_ITEM * items
        + SEQUENCE_END
        + _ui(0x00080016, CT_IMAGE_STORAGE)
        + _ui(0x00080018, f"1.2.826.0.1.3680043.8.498.17.{index}")
        + _ui(0x0020000D, "1.2.826.0.1.3680043.8.498.17.0")
        + _ui(0x0020000E, "1.2.826.0.1.3680043.8.498.17.1")
    )
    if deflate:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data_set = deflater.compress(data_set) + deflater.flush()
    transfer_syntax = DEFLATED if deflate else EXPLICIT_VR_LITTLE_ENDIAN
    return bytes(128) + b"DICM" + _ui(0x00020010, transfer_syntax) + data_set


def bomb_body(parts: int, boundary: str, *, first_index: int = 0) -> bytes:
    """A multipart body of ``parts`` deflated item bombs (~11 KB each)."""
    return build_multipart([item_bomb(first_index + i) for i in range(parts)], boundary)


def many_header_lines_body(parts: int, lines: int, boundary: str) -> bytes:
    """``parts`` one-byte parts, each with ``lines`` short header lines (``X-a: b``)."""
    headers = [("Content-Type", "application/dicom")] + [("X-a", "b")] * (lines - 1)
    return build_multipart([b"x"] * parts, boundary, part_headers=[headers] * parts)


def empty_parts_body(parts: int, boundary: str) -> bytes:
    """``parts`` parts with no header and no payload: ~9 bytes each on the wire."""
    dash = b"--" + boundary.encode("latin-1")
    return b"\r\n" + (dash + b"\r\n\r\n") * parts + dash + b"--\r\n"
