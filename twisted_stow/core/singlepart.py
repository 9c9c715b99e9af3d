"""Reader for a bare ``application/dicom`` body: one part, the same events.

Single-part STOW (the whole body is one PS3.10 file) is an extension that
Microsoft's and MONAI's servers accept too.  Reading it through the same
events as multipart/related lets everything after the reader ignore which
framing the client chose.  Standard library only, like ``multipart.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum, auto

from .multipart import (
    BodyEnded,
    BodyReader,
    Event,
    PartData,
    PartEnded,
    PartStarted,
)

# BodyReader (the Protocol both readers satisfy) lives with the events in
# multipart.py and is re-exported here for callers that only know this module.
__all__ = ["SINGLE_PART_HEADERS", "BodyReader", "SinglePartReader"]

# The headers the one part is given: what a multipart client would have sent.
SINGLE_PART_HEADERS: tuple[tuple[str, str], ...] = (("content-type", "application/dicom"),)


class _State(Enum):
    WAITING = auto()
    IN_PART = auto()
    CLOSED = auto()


class SinglePartReader:
    """Turns a bare application/dicom body into one part's events.

    The first non-empty chunk starts the part; every chunk is passed on as is
    (no copy).  ``close`` ends the part, if one started, and the body: an empty
    body yields only ``BodyEnded()`` and the caller decides that means no parts.
    """

    def __init__(self) -> None:
        self._state = _State.WAITING

    @property
    def buffered_bytes(self) -> int:
        """Bytes held back: always 0, every chunk is passed on at once."""
        return 0

    def feed(self, data: bytes) -> list[Event]:
        """Consume the next chunk of the body; return its events."""
        return list(self.events(data))

    def events(self, data: bytes) -> Iterator[Event]:
        """Consume the next chunk of the body, yielding its events."""
        if self._state is _State.CLOSED:
            raise RuntimeError("feed() after close()")
        if not data:
            return
        if self._state is _State.WAITING:
            self._state = _State.IN_PART
            yield PartStarted(SINGLE_PART_HEADERS)
        yield PartData(data)

    def close(self) -> list[Event]:
        """Signal the end of the body; return the closing events (once)."""
        if self._state is _State.CLOSED:
            return []
        events: list[Event] = []
        if self._state is _State.IN_PART:
            events.append(PartEnded())
        events.append(BodyEnded())
        self._state = _State.CLOSED
        return events
