"""Slow-client limits as pure arithmetic: the minimum body rate.

A slowloris client dodges an idle timeout by sending a byte every few
seconds.  The header deadline (``channel.py``) stops that before the body;
during the body, ``MinimumRate`` asks for at least ``bytes_per_second`` on
average over every window of ``window_seconds``.  Only time the server is
reading counts: while the server itself has paused the socket (storage is
behind) the client cannot send, so that time is excluded, like Apache's
``mod_reqtimeout`` ``MinRate`` but with our own pauses taken out.

No clock of its own: the caller passes ``now`` (seconds, monotonic), so the
rules are tested with plain numbers and the Twisted edge owns the timer.
"""

from __future__ import annotations

# Headers are one packet for every real client; 30 s leaves room for a
# lossy link and still ends a trickle well before the idle timeout would
# (nginx: client_header_timeout 60 s; Apache mod_reqtimeout: 20-40 s).
DEFAULT_HEADER_TIMEOUT_SECONDS = 30.0
# 1 KiB/s is far below any real upload (a 64 kbit/s line sends 8 KB/s) and
# far above a trickle of a byte every few seconds.  Apache's MinRate is 500.
DEFAULT_MIN_BODY_RATE_BYTES = 1024
# Averaged over a minute of reading: a client may stall briefly (its own disk,
# a retransmission) and catch up, as long as the minute carries real data.
DEFAULT_BODY_RATE_WINDOW_SECONDS = 60.0


class MinimumRate:
    """Checks that a body arrives at a minimum average rate, pauses excluded.

    ``check(now)`` answers with the seconds until the next check is due, or
    ``None`` when a full window of reading time passed with too few bytes.
    Each full window that carried enough bytes starts a new window, so an
    early burst does not pay for a trickle later.
    """

    def __init__(self, bytes_per_second: int, window_seconds: float, now: float) -> None:
        if bytes_per_second <= 0 or window_seconds <= 0:
            raise ValueError("need a positive rate and window")
        self.required_bytes = bytes_per_second * window_seconds
        self.window_seconds = window_seconds
        self.window_bytes = 0
        # Reading time of this window before the current run of reading.
        self._active_before = 0.0
        # When the current run of reading began; None while paused.
        self._running_since: float | None = now

    @property
    def paused(self) -> bool:
        return self._running_since is None

    def received(self, nbytes: int) -> None:
        """Body bytes arrived (also while paused: one read may still land)."""
        self.window_bytes += nbytes

    def pause(self, now: float) -> None:
        """The server stopped reading; the time until ``resume`` does not count."""
        if self._running_since is not None:
            self._active_before += now - self._running_since
            self._running_since = None

    def resume(self, now: float) -> None:
        """The server reads again."""
        if self._running_since is None:
            self._running_since = now

    def reading_seconds(self, now: float) -> float:
        """Time spent reading in the current window."""
        running = 0.0 if self._running_since is None else now - self._running_since
        return self._active_before + running

    def check(self, now: float) -> float | None:
        """Seconds until the next check, or None: the client is too slow."""
        remaining = self.window_seconds - self.reading_seconds(now)
        if remaining > 0:
            # Paused: nothing changes until it resumes, but checking again
            # after the remaining reading time is never too early.
            return remaining
        if self.window_bytes < self.required_bytes:
            return None
        self.window_bytes = 0
        self._active_before = 0.0
        if self._running_since is not None:
            self._running_since = now
        return self.window_seconds
