"""One measured run of ``stow_bench.py``: the record ``_report.py`` summarises.

It lives apart from both so that the report imports it at run time without
importing the script that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Measurement:
    """One run of one scenario against one target."""

    scenario: str  # "throughput", "concurrency", "limit", "memory", "workers"
    study: str
    target: str  # "ours", "ours-w1", "ours-length", "orthanc", "sink", "disk"
    clients: int
    run: int
    seconds: float
    body_bytes: int  # of the requests answered 200 (admitted work)
    instances: int  # stored (answered 200)
    answers: dict[str, int] = field(default_factory=dict)  # status -> count
    latencies: list[float] = field(default_factory=list)  # of 200 answers, s
    refusal_latencies: list[float] = field(default_factory=list)  # connect -> 503 status line
    # limit runs: a probe in its own process (_probe.py), head sent -> 503 status line
    probe_refusal_latencies: list[float] = field(default_factory=list)
    probe_admitted: int = 0
    peak_rss: int | None = None
    kernel_peak_rss: int | None = None
    # The largest single process of the server's tree (main or a worker):
    # sampled RSS, and VmHWM.  The two above are the tree's sums.
    peak_process_rss: int | None = None
    kernel_peak_process_rss: int | None = None
    processes: int | None = None  # how many processes the server's tree had
    cpu_seconds: float | None = None
    problems: list[str] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def mb_per_second(self) -> float:
        return self.body_bytes / self.seconds / 1e6

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds
