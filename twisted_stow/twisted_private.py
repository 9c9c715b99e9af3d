"""The private parts of twisted.web this server relies on, in one place.

Streaming a body as it arrives needs state that ``HTTPChannel`` keeps to
itself: the request line (and its version) before the body is in, how much of a chunk is still
announced, whether the channel is between a request's body and its answer,
and the hook that answers framing errors.  Each is read or overridden here
only; tests/memory/test_twisted_private.py fails loudly if Twisted renames
one (all unchanged from Twisted 13 to 26).
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """Method and request-target of the request whose headers just arrived.

    ``Request.method``/``uri`` are placeholders until the body is in, but
    ``HTTPChannel`` keeps the parsed request line in ``_command``/``_path``.
    """
    command: bytes = channel._command
    path: bytes = channel._path
    return command, path


def request_version(channel: Any) -> bytes:
    """The HTTP version of the request whose headers just arrived (``HTTPChannel._version``)."""
    version: bytes = channel._version
    return version


def announced_chunk_bytes(channel: Any) -> int:
    """Bytes the chunk being delivered still announces after this piece.

    Twisted trusts any chunk-size and counts down from it; reading what is
    left lets an absurd size be refused before its data is processed.  0 when
    the body is not chunked.
    """
    decoder = getattr(channel, "_transferDecoder", None)
    if isinstance(decoder, _ChunkedTransferDecoder) and decoder.state == "BODY":
        length: int = decoder.length
        return length
    return 0


def awaiting_response(channel: Any) -> bool:
    """True from a request's last body byte until its response is done.

    In that span HTTPChannel owns the read side: it resumes the transport
    and restores its saved idle timeout itself once the response is written.
    """
    handling: bool = channel._handlingRequest
    return handling


def restore_timeout_after_response(channel: Any, timeout: float | None) -> None:
    """The idle timeout HTTPChannel puts back once the current response is done."""
    channel._savedTimeOut = timeout


class HookedHTTPChannel(HTTPChannel):
    """HTTPChannel whose private framing-error hook has a public name."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Called by HTTPChannel for what it detects itself: a malformed
        # request line, header or chunk, Content-Length with chunked, too many
        # or too large headers.
        self.framing_error()

    def framing_error(self) -> None:
        """Answer a request HTTPChannel found unparsable; Twisted's bare 400 by default."""
        super()._respondToBadRequestAndDisconnect()  # type: ignore[no-untyped-call]
