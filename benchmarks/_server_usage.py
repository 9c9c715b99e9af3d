"""What a server process uses while it is measured: RSS samples, the kernel's
high-water mark (``VmHWM``) and CPU seconds, read with psutil and /proc.

Sampling every 20 ms can miss a short spike; ``VmHWM``, reset before a run
through ``/proc/PID/clear_refs``, cannot, so the reports show the larger.

Each figure is of the process *tree*: a server with worker processes
(``--workers``) is its main process and every worker, summed (for ``VmHWM``
a sum of peaks, an upper bound of the tree's peak).  The largest single
process is kept beside the sum (``RssSampler.process_peak``,
``kernel_process_peak``): a memory target of one process is judged on it.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Self

import psutil

SAMPLE_INTERVAL_SECONDS = 0.020


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants still running (a server's workers); [] once it is gone."""
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Periodic:
    """Calls ``tick`` every ``interval`` seconds in a thread, from ``with`` until its end.

    ``tick`` returns False to stop early (the process it watches is gone).
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        while self.tick() and not self._stop.wait(self._interval):
            pass


class RssSampler(Periodic):
    """Samples a process's RSS every 20 ms in a thread; keeps the peak and the series."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
        super().__init__(interval)
        self._pid = pid
        self.samples: list[tuple[float, int]] = []  # (seconds, the tree's sum)
        self.process_peak = 0  # the largest RSS one process of the tree reached
        self.processes: set[int] = set()  # every pid seen in the tree

    def tick(self) -> bool:
        processes = tree(self._pid)
        if not processes:
            return False
        rss = 0
        for process in processes:
            try:
                one = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            rss += one
            self.process_peak = max(self.process_peak, one)
            self.processes.add(process.pid)
        self.samples.append((time.monotonic() - self._start, rss))
        return True

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


def reset_kernel_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where unsupported."""
    try:
        for process in tree(pid):
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def kernel_peaks(pid: int) -> list[int] | None:
    """VmHWM of each process of ``pid``'s tree in bytes, or None off Linux."""
    peaks = []
    for process in tree(pid) or [psutil.Process(pid)]:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match is None:
            return None
        peaks.append(int(match.group(1)) * 1024)
    return peaks


def kernel_peak(pid: int) -> int | None:
    """VmHWM of ``pid``'s tree in bytes (a sum of peaks), or None off Linux."""
    peaks = kernel_peaks(pid)
    return None if peaks is None else sum(peaks)


def kernel_process_peak(pid: int) -> int | None:
    """The largest VmHWM of one process of ``pid``'s tree, or None off Linux."""
    peaks = kernel_peaks(pid)
    return None if peaks is None else max(peaks)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid``'s tree has used so far (workers still running)."""
    total = 0.0
    for process in tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
