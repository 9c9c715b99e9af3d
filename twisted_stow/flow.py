"""Backpressure for one upload: bytes received but not yet written to storage.

One owner decides when to stop reading the socket.  Every part writer of an
upload adds the bytes it accepts and subtracts them once storage has written
them; crossing the high-water mark pauses the producer (the request, which
stops reading the socket), falling below the low-water mark resumes it.  Like
``twisted.internet.abstract.FileDescriptor._maybePauseProducer``, but counted
in bytes in flight to storage rather than in a write buffer.
"""

from __future__ import annotations

from typing import Protocol

# Measured in ../shared/TWISTED.md Q3: pausing above 8 MiB queued and resuming
# below 2 MiB kept peak RSS flat (~80 MB) while a slow sink throttled a 1 GiB
# upload to 20 MB/s, with 125 pauses over 54 s.
HIGH_WATER_BYTES = 8 * 1024 * 1024
LOW_WATER_BYTES = 2 * 1024 * 1024


class Pausable(Protocol):
    """What the flow controller drives: the request's read side."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class BytesInFlight:
    """Counts bytes handed to storage and not yet written; pauses above a mark."""

    def __init__(
        self,
        producer: Pausable,
        *,
        high_water_bytes: int = HIGH_WATER_BYTES,
        low_water_bytes: int = LOW_WATER_BYTES,
    ) -> None:
        if not 0 <= low_water_bytes < high_water_bytes:
            raise ValueError("need 0 <= low water < high water")
        self._producer = producer
        self._high = high_water_bytes
        self._low = low_water_bytes
        self.in_flight_bytes = 0
        self.paused = False
        self.pause_count = 0

    def add(self, nbytes: int) -> None:
        """Storage accepted ``nbytes`` it has not written yet."""
        self.in_flight_bytes += nbytes
        if not self.paused and self.in_flight_bytes > self._high:
            self.paused = True
            self.pause_count += 1
            self._producer.pauseProducing()

    def done(self, nbytes: int) -> None:
        """Storage wrote (or dropped) ``nbytes`` it had accepted."""
        self.in_flight_bytes -= nbytes
        if self.paused and self.in_flight_bytes < self._low:
            self.paused = False
            self._producer.resumeProducing()
