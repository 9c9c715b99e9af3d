"""Small fakes shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred


class RecordingProducer:
    """A producer for BytesInFlight that records its pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


class HeldThreads:
    """A stand-in for the KDF's thread pool (auth.cred.KdfThreads): jobs wait for ``run_all``."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.jobs.append((f, args, done))
        return done

    def run_all(self) -> None:
        jobs, self.jobs = self.jobs, []
        for f, args, done in jobs:
            done.callback(f(*args))
