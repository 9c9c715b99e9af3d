"""Small fakes shared by unit and integration tests."""

from __future__ import annotations


class RecordingProducer:
    """A producer for BytesInFlight that records its pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")
