"""Request content codings (RFC 9110 §8.4): which ones we decode, and the streaming decoder.

Pure, standard library only.  ``request_coding`` reads ``Content-Encoding``
from the headers (415 with ``Accept-Encoding`` for one we cannot decode, RFC
9110 §15.5.16); ``BodyDecoder`` inflates the body as it arrives with
``zlib.decompressobj``, never more than the caller's ``max_bytes`` per call,
so a few kilobytes that inflate to gigabytes (a decompression bomb) are only
ever decoded a slice at a time: the caller checks its limits and its
backpressure between slices.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence

from .errors import InvalidContentCoding, UnsupportedContentCoding, shorten

GZIP, DEFLATE = "gzip", "deflate"
# What Accept-Encoding names on a 415, in our order of preference.
SUPPORTED_CODINGS = (GZIP, DEFLATE)
# RFC 9110 §8.4.1.3: a recipient should treat "x-gzip" as "gzip"; "identity"
# (§12.5.3) means no coding at all.
_ALIASES = {"x-gzip": GZIP, GZIP: GZIP, DEFLATE: DEFLATE}
_IDENTITY = "identity"
# zlib window bits: 16 + 15 reads the gzip wrapper (RFC 1952), 15 the zlib
# wrapper that HTTP's "deflate" names (RFC 9110 §8.4.1.2, RFC 1950), -15 raw
# deflate (RFC 1951), which some clients send as "deflate" all the same.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


def request_coding(values: Sequence[bytes] | None) -> str | None:
    """The coding of the request content: None (identity), ``gzip`` or ``deflate``.

    Several codings applied in turn (``gzip, gzip``) are refused like an
    unknown one: no client sends them, and each layer would multiply what a
    bomb inflates to.  Raises ``UnsupportedContentCoding`` (415).
    """
    if not values:
        return None
    codings = [
        token.strip().lower()
        for value in values
        for token in value.decode("latin-1").split(",")
        if token.strip()
    ]
    codings = [coding for coding in codings if coding != _IDENTITY]
    if not codings:
        return None
    if len(codings) > 1:
        raise UnsupportedContentCoding(
            f"Content-Encoding {shorten(', '.join(codings))!r}: one coding at most is decoded",
            SUPPORTED_CODINGS,
        )
    coding = _ALIASES.get(codings[0])
    if coding is None:
        raise UnsupportedContentCoding(
            f"Content-Encoding {shorten(codings[0])!r} is not one this server decodes",
            SUPPORTED_CODINGS,
        )
    return coding


class BodyDecoder:
    """Inflates one request body, a bounded slice at a time.

    ``push`` queues received (compressed) bytes without decoding them;
    ``decode(max_bytes)`` returns at most ``max_bytes`` decoded bytes (b""
    once everything queued is decoded); ``close`` checks that the stream
    ended where the body did.  Damage raises ``InvalidContentCoding``.  The
    input held is what was pushed and not yet decoded (one socket read or
    two: the caller stops reading while slices are pending).
    """

    def __init__(self, coding: str) -> None:
        if coding not in SUPPORTED_CODINGS:
            raise ValueError(f"not a supported coding: {coding!r}")
        self.coding = coding
        self._input: deque[bytes] = deque()
        self._tail = b""  # input zlib has not consumed yet (its unconsumed_tail)
        self._inflater: zlib._Decompress | None = None
        self._ended = False  # the current stream (gzip member) reached its end
        self.decoded_bytes = 0

    @property
    def pending(self) -> bool:
        """Whether queued input remains to be decoded."""
        return bool(self._tail or self._input)

    def push(self, data: bytes) -> None:
        if data:
            self._input.append(bytes(data))

    def decode(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` (> 0) decoded bytes from what was pushed."""
        while True:
            if not self._tail:
                if not self._input:
                    return b""
                self._tail = self._input.popleft()
            if self._inflater is None or self._ended:
                self._start_stream()
                if self._inflater is None:
                    return b""  # deflate: waiting for the second byte
            inflater = self._inflater
            try:
                out = inflater.decompress(self._tail, max_bytes)
            except zlib.error as e:
                raise InvalidContentCoding(f"the {self.coding} body is damaged: {e}") from None
            if inflater.eof:
                self._ended = True
                self._tail = inflater.unused_data
            else:
                self._tail = inflater.unconsumed_tail
            if out:
                self.decoded_bytes += len(out)
                return out

    def _start_stream(self) -> None:
        """A new zlib stream: the first, or the next gzip member (RFC 1952 §2.2)."""
        if self._ended and self.coding != GZIP:
            raise InvalidContentCoding("data after the end of the deflate stream")
        if self.coding == GZIP:
            self._inflater = zlib.decompressobj(_GZIP_WBITS)
        else:
            if len(self._tail) < 2 and self._input:
                self._tail += self._input.popleft()
            if len(self._tail) < 2:
                return
            self._inflater = zlib.decompressobj(
                _ZLIB_WBITS if _is_zlib_header(self._tail) else _RAW_WBITS
            )
        self._ended = False

    def close(self) -> None:
        """The body ended: it must end with a complete stream."""
        if self.pending or not self._ended:
            raise InvalidContentCoding(f"the {self.coding} body ends before its stream does")


def _is_zlib_header(data: bytes) -> bool:
    """RFC 1950 §2.2: CM 8 (deflate) and the FCHECK multiple of 31."""
    return data[0] & 0x0F == 8 and (data[0] * 256 + data[1]) % 31 == 0
