"""Backpressure for one upload: bytes received but not yet written to storage.

One owner decides when to stop reading the socket: the upload's ``Ingest``.
It adds the bytes it hands to a part writer and subtracts them when that
write's Deferred fires (storage wrote or dropped them); crossing the
high-water mark pauses the producer (the request, which stops reading the
socket), falling below the low-water mark resumes it.  Like
``twisted.internet.abstract.FileDescriptor._maybePauseProducer``, but counted
in bytes in flight to storage rather than in a write buffer.  Backends do no
accounting of their own.
"""

from __future__ import annotations

from typing import Protocol

from .ops.metrics import STORAGE_PAUSES

# Measured (docs/STREAMING.md, "Backpressure"): pausing above 8 MiB queued and resuming
# below 2 MiB kept peak RSS flat (~80 MB) while a slow sink throttled a 1 GiB
# upload to 20 MB/s, with 125 pauses over 54 s.
HIGH_WATER_BYTES = 8 * 1024 * 1024
LOW_WATER_BYTES = 2 * 1024 * 1024
# Parts between "received whole" and "outcome known".  Each costs storage a
# few milliseconds (the filesystem: an fsync on a writer thread; validation
# is a few comparisons on the reactor); 64 queued keeps every thread busy
# for a 2,000-instance CT without letting tiny-part bodies pile up work.
HIGH_WATER_PARTS = 64
LOW_WATER_PARTS = 16


class Pausable(Protocol):
    """What the flow controller drives: the request's read side."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class BytesInFlight:
    """Counts what storage has not finished; pauses the producer above a mark.

    Three measures, any of which pauses: bytes accepted but not yet written,
    parts received whole but not yet validated and committed, and header
    captures whose walk is behind the bytes received (``Ingest`` spreads a
    long walk over reactor turns, and reading on would only queue more).  Bytes
    alone would let a body of many tiny parts queue unbounded per-part work
    (a file, an fsync and a validation each) while never crossing a byte mark.
    """

    def __init__(
        self,
        producer: Pausable,
        *,
        high_water_bytes: int = HIGH_WATER_BYTES,
        low_water_bytes: int = LOW_WATER_BYTES,
        high_water_parts: int = HIGH_WATER_PARTS,
        low_water_parts: int = LOW_WATER_PARTS,
    ) -> None:
        if not 0 <= low_water_bytes < high_water_bytes:
            raise ValueError("need 0 <= low water < high water (bytes)")
        if not 0 <= low_water_parts < high_water_parts:
            raise ValueError("need 0 <= low water < high water (parts)")
        self._producer = producer
        self._high = high_water_bytes
        self._low = low_water_bytes
        self._high_parts = high_water_parts
        self._low_parts = low_water_parts
        self.in_flight_bytes = 0
        self.pending_parts = 0
        # Header captures with bytes still to walk (their walk was cut into
        # steps): while any is behind, nothing more is read.
        self.captures_behind = False
        self.paused = False
        self.pause_count = 0

    def add(self, nbytes: int) -> None:
        """``nbytes`` were handed to storage, which has not written them yet."""
        self.in_flight_bytes += nbytes
        self._update()

    def done(self, nbytes: int) -> None:
        """Storage wrote (or dropped) ``nbytes`` it had accepted."""
        self.in_flight_bytes -= nbytes
        self._update()

    def part_started(self) -> None:
        """A complete part went on to validation and commit."""
        self.pending_parts += 1
        self._update()

    def part_finished(self) -> None:
        """A part has its outcome."""
        self.pending_parts -= 1
        self._update()

    def captures_behind_changed(self, behind: bool) -> None:
        """Header captures fell behind the bytes received (True) or caught up (False)."""
        self.captures_behind = behind
        self._update()

    def _update(self) -> None:
        if not self.paused:
            if (
                self.in_flight_bytes > self._high
                or self.pending_parts > self._high_parts
                or self.captures_behind
            ):
                self.paused = True
                self.pause_count += 1
                STORAGE_PAUSES.inc()
                self._producer.pauseProducing()
        elif (
            self.in_flight_bytes < self._low
            and self.pending_parts < self._low_parts
            and not self.captures_behind
        ):
            self.paused = False
            self._producer.resumeProducing()
