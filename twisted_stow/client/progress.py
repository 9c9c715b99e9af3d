"""What the user sees while a run goes: a tqdm bar on a terminal, else a plain line.

Twisted edge (a ``LoopingCall`` redraws from the ``Tally``; nothing is
drawn per write, so progress costs nothing on the data path).  tqdm, not
rich: it is one small pure-Python package with no dependencies, its bar
already shows bytes, MB/s and ETA and takes the counts in a postfix, and
it draws on stderr with ``\\r`` only, so stdout keeps just the summary.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Protocol

from tqdm import tqdm
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from .summary import MB, Tally, rate

# A bar redraws this often; tqdm itself would redraw on every update.
BAR_REFRESH_SECONDS = 0.5
# Without a terminal (a log, CI), one line this often.
PLAIN_LINE_SECONDS = 5.0


class Progress(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    """``--quiet``: nothing until the summary."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _Drawn:
    """Calls ``draw`` every ``interval`` seconds from ``start`` to ``stop``."""

    interval: float

    def __init__(self, clock: IReactorTime, tally: Tally, inflight: Callable[[], int]) -> None:
        self.tally = tally
        self._inflight = inflight
        self._loop = LoopingCall(self.draw)
        self._loop.clock = clock

    def done_bytes(self) -> int:
        """Bytes settled (stored or failed) plus what is in flight now."""
        return self.tally.stored_bytes + self.tally.failed_bytes + self._inflight()

    def todo_bytes(self) -> int:
        return self.tally.to_send_bytes

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.draw()

    def draw(self) -> None:
        raise NotImplementedError


class BarProgress(_Drawn):
    """The tqdm bar: bytes, MB/s and ETA, with instances, retries and failures."""

    interval = BAR_REFRESH_SECONDS

    def __init__(
        self, clock: IReactorTime, tally: Tally, inflight: Callable[[], int], out: IO[str]
    ) -> None:
        super().__init__(clock, tally, inflight)
        self._bar = tqdm(
            total=0,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=out,
            dynamic_ncols=True,
            mininterval=0,
            smoothing=0.1,
            desc="stow-upload",
        )

    def draw(self) -> None:
        tally = self.tally
        self._bar.total = max(self.todo_bytes(), 1)
        self._bar.n = min(self.done_bytes(), self._bar.total)
        self._bar.set_postfix_str(
            f"{tally.stored}/{tally.to_send} instances, "
            f"{tally.retries} retries, {tally.failed_total} failed",
            refresh=False,
        )
        self._bar.refresh()

    def stop(self) -> None:
        super().stop()
        self._bar.close()


class LineProgress(_Drawn):
    """One plain line every few seconds (no terminal)."""

    interval = PLAIN_LINE_SECONDS

    def __init__(
        self,
        clock: IReactorTime,
        tally: Tally,
        inflight: Callable[[], int],
        out: IO[str],
    ) -> None:
        super().__init__(clock, tally, inflight)
        self._out = out
        self._clock = clock
        self._started = clock.seconds()

    def draw(self) -> None:
        tally = self.tally
        seconds = self._clock.seconds() - self._started
        speed = rate(tally.stored_bytes / MB, seconds)
        self._out.write(
            f"stow-upload: {tally.stored}/{tally.to_send} instances, "
            f"{self.done_bytes() / MB:.1f}/{self.todo_bytes() / MB:.1f} MB, {speed:.1f} MB/s, "
            f"{tally.retries} retries, {tally.failed_total} failed\n"
        )
        self._out.flush()


def progress_for(
    clock: IReactorTime,
    tally: Tally,
    inflight: Callable[[], int],
    *,
    quiet: bool,
    out: IO[str] | None = None,
) -> Progress:
    """The bar on a terminal, plain lines elsewhere, nothing when ``quiet``."""
    stream = out if out is not None else sys.stderr
    if quiet:
        return NoProgress()
    if stream.isatty():
        return BarProgress(clock, tally, inflight, stream)
    return LineProgress(clock, tally, inflight, stream)
