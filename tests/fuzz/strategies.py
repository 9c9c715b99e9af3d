"""Hypothesis strategies that reach the parsers' interesting states, not only random noise."""

from __future__ import annotations

import struct
import zlib

from hypothesis import strategies as st

from tests.attacks import DEFLATED, EXPLICIT_VR_LITTLE_ENDIAN

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
TRANSFER_SYNTAXES = [
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    DEFLATED,
    "1.2.3",
]

boundaries = st.binary(min_size=1, max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b)
cuts = st.lists(st.integers(min_value=0, max_value=4096), max_size=12)


@st.composite
def multipart_bodies(draw: st.DrawFn, boundary: bytes) -> bytes:
    """Bodies made of framing pieces (delimiters, CRLFs, dashes, headers) and noise."""
    token = st.one_of(
        st.sampled_from(
            [
                b"--" + boundary,
                b"\r\n--" + boundary,
                b"\r\n",
                b"\r",
                b"\n",
                b"--",
                b" ",
                b"\t",
                b"\r\n\r\n",
                b"Content-Type: application/dicom\r\n",
                b"X: a\r\n b\r\n",
                b"a:b\r\n",
                b": bad\r\n",
                boundary[:1],
            ]
        ),
        st.binary(max_size=16),
    )
    return b"".join(draw(st.lists(token, max_size=40)))


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


@st.composite
def dicom_parts(draw: st.DrawFn) -> bytes:
    """A preamble, "DICM", a File Meta group and a data set of plausible and broken pieces."""
    transfer_syntax = draw(st.sampled_from(TRANSFER_SYNTAXES)).encode()
    meta = _element(0x00020010, b"UI", transfer_syntax + b"\x00" * (len(transfer_syntax) % 2))
    uid = st.sampled_from([b"1.2.3.4", b"1.2.840.10008.5.1.4.1.1.2\x00", b"", b"x" * 1100])
    tags = st.sampled_from([0x00080016, 0x00080018, 0x00081140, 0x0020000D, 0x0020000E, 0x00280010])
    pieces = st.one_of(
        st.builds(_element, tags, st.sampled_from([b"UI", b"SQ", b"OB", b"UN", b"\x00\x01"]), uid),
        st.sampled_from(
            [
                struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF),
                struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF),
                struct.pack("<HHI", 0xFFFE, 0xE000, 0),
                struct.pack("<HHI", 0xFFFE, 0xE000, 8),
                struct.pack("<HHI", 0xFFFE, 0xE00D, 0),
                struct.pack("<HHI", 0xFFFE, 0xE0DD, 0),
                struct.pack("<HHI", 0x0008, 0x0018, 0xFFFFFFFF),
                struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF),
            ]
        ),
        st.binary(max_size=12),
    )
    data_set = b"".join(draw(st.lists(pieces, max_size=30)))
    if transfer_syntax.decode() == DEFLATED and draw(st.booleans()):
        deflater = zlib.compressobj(draw(st.integers(0, 9)), zlib.DEFLATED, -zlib.MAX_WBITS)
        data_set = deflater.compress(data_set) + deflater.flush()
        data_set = data_set[: draw(st.integers(0, len(data_set)))]  # maybe cut
    preamble = draw(st.sampled_from([bytes(128) + b"DICM", bytes(128) + b"DICN", b"DICM"]))
    return preamble + meta + data_set
