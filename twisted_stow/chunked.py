"""``ZeroCopyChunkedDecoder``: Twisted's chunked decoder without its two copies.

Twisted's ``_ChunkedTransferDecoder`` appends every read to a ``bytearray``
and hands each piece of chunk data on as a fresh ``bytes`` copied out of it:
two Python-level copies of every body byte (py-spy: 14% of the reactor
thread's samples for the 20 x 50 MiB study, sent in 1 MiB chunks).  This
subclass walks each read in place: a read that lies inside one chunk's data
(most of them: a read is 256 KiB, a chunk 1 MiB) is passed on as it is, and
only a read that spans chunk framing is sliced, once.  Framing split across
reads (a chunk-size line or the CRLF after a chunk), the last chunk's
trailer and every error go through Twisted's own code, on a few bytes: the
decoded body, the pieces, the errors and ``state``/``length`` as seen from
the data callback (``twisted_private.announced_chunk_bytes``) are exactly
Twisted's (tests/unit/test_chunked.py compares them on random inputs).
"""

from __future__ import annotations

from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError

from .twisted_private import MAX_CHUNK_SIZE_LINE_BYTES

_CRLF = b"\r\n"


class ZeroCopyChunkedDecoder(_ChunkedTransferDecoder):
    """``_ChunkedTransferDecoder`` whose chunk data are the reads themselves, or slices."""

    def dataReceived(self, data: bytes) -> None:
        pos = self._complete_framing(data)
        end = len(data)
        while pos < end:
            state = self.state
            if state == "BODY":
                take = min(self.length, end - pos)
                piece = data if take == end else data[pos : pos + take]
                pos += take
                # As Twisted: ``length`` counts down before the callback, and
                # the chunk's last piece is delivered in state CRLF.
                self.length -= take
                if not self.length:
                    self.state = "CRLF"
                self.dataCallback(piece)
            elif state == "CRLF":
                if end - pos < len(_CRLF):
                    break
                if not data.startswith(_CRLF, pos):
                    raise _MalformedChunkedDataError("Chunk did not end with CRLF")
                pos += len(_CRLF)
                self.state = "CHUNK_LENGTH"
            elif state == "CHUNK_LENGTH":
                eol = data.find(_CRLF, pos, pos + MAX_CHUNK_SIZE_LINE_BYTES + len(_CRLF))
                if eol == -1:
                    break  # split across reads, or too long: Twisted decides
                # Twisted parses the line (size, extensions, limits) and
                # leaves its buffer empty again.
                self._buffer += data[pos : eol + len(_CRLF)]
                pos = eol + len(_CRLF)
                self._dataReceived_CHUNK_LENGTH()
            else:
                break  # TRAILER or FINISHED: Twisted's, on what is left
        if pos < end:
            super().dataReceived(data[pos:] if pos else data)

    def _complete_framing(self, data: bytes) -> int:
        """Finish framing an earlier read left in Twisted's buffer; return where
        this read's own bytes start (Twisted consumed those before it).

        Only the bytes that can complete the CRLF or the chunk-size line are
        fed to Twisted, so the chunk data after them are not copied.
        """
        pos = 0
        end = len(data)
        while self._buffer and pos < end:
            if self.state == "CRLF":
                stop = pos + len(_CRLF) - len(self._buffer)
            elif self.state == "CHUNK_LENGTH":
                newline = data.find(b"\n", pos, pos + MAX_CHUNK_SIZE_LINE_BYTES + len(_CRLF))
                stop = end if newline == -1 else newline + 1
            else:
                stop = end  # TRAILER: the body's end, Twisted's whole
            super().dataReceived(data[pos:stop])
            pos = stop
        return pos
