"""When to start the next worker of a slot whose worker died: the restart back-off.

A worker that crashes on every request, or soon after it starts serving,
would otherwise be replaced at once, every time: a fork loop that burns
the cores the other workers serve on.  So each slot keeps a count of its
workers that died young (served for less than ``young_seconds``, or never): the
first such death is replaced at once (an isolated crash costs nothing),
each further one waits twice as long as the one before, from
``first_delay_seconds`` up to ``max_delay_seconds``.  A worker that served
for ``young_seconds`` or more clears the count.  Pure: the clock is
passed in.
"""

from __future__ import annotations

from collections.abc import Callable

# Served for less than this, a worker "died young".
YOUNG_SECONDS = 10.0
FIRST_DELAY_SECONDS = 0.1
MAX_DELAY_SECONDS = 30.0


class RestartBackoff:
    """One slot's record of its young deaths; ``ended`` says how long to wait."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        young_seconds: float = YOUNG_SECONDS,
        first_delay_seconds: float = FIRST_DELAY_SECONDS,
        max_delay_seconds: float = MAX_DELAY_SECONDS,
    ) -> None:
        self._clock = clock
        self.young_seconds = young_seconds
        self.first_delay_seconds = first_delay_seconds
        self.max_delay_seconds = max_delay_seconds
        self.young_deaths = 0
        self._serving_since: float | None = None

    def serving(self) -> None:
        """The slot's worker is ready: its lifetime counts from now."""
        self._serving_since = self._clock()

    def ended(self) -> float:
        """The slot's worker ended: the seconds to wait before its replacement starts."""
        since, self._serving_since = self._serving_since, None
        if since is not None and self._clock() - since >= self.young_seconds:
            self.young_deaths = 0
            return 0.0
        self.young_deaths += 1
        if self.young_deaths == 1:
            return 0.0
        # 2 ** a large exponent would overflow a float long after the cap.
        exponent = min(self.young_deaths - 2, 64)
        return float(min(self.max_delay_seconds, self.first_delay_seconds * 2**exponent))
