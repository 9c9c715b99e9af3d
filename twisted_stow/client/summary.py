"""The counts of a run and the summary table printed at its end.  Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .answer import reason_text
from .files import SkipReason

MB = 1_000_000  # MB/s in SI megabytes, as network rates are given


@dataclass
class Tally:
    """What happened so far, updated as the run goes."""

    found: int = 0  # DICOM files found (journaled ones included)
    found_bytes: int = 0
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    stored: int = 0
    stored_bytes: int = 0
    already_stored: int = 0  # skipped through the journal
    already_stored_bytes: int = 0
    # (FailureReason or None, text) → count
    failed: Counter[tuple[int | None, str]] = field(default_factory=Counter)
    failed_bytes: int = 0
    retries: int = 0
    sent_bytes: int = 0  # every body byte written, retries included

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def to_send(self) -> int:
        """Instances this run has to send: found, less those the journal skipped."""
        return self.found - self.already_stored

    @property
    def to_send_bytes(self) -> int:
        return self.found_bytes - self.already_stored_bytes


def rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0


def render_summary(tally: Tally, seconds: float) -> str:
    """The summary table: found, skipped, stored, already stored, failed by reason,
    bytes, time, MB/s and instances/s (rates of what this run stored)."""
    rows: list[tuple[str, str]] = [
        ("found", f"{tally.found} DICOM files ({tally.found_bytes / MB:.1f} MB)"),
        ("skipped", str(tally.skipped_total)),
    ]
    rows += [(f"  {reason.value}", str(n)) for reason, n in sorted(tally.skipped.items(), key=str)]
    rows += [
        ("stored", str(tally.stored)),
        ("already stored", f"{tally.already_stored} (in the journal)"),
        ("failed", str(tally.failed_total)),
    ]
    for (code, text), n in sorted(
        tally.failed.items(), key=lambda item: (item[0][0] or 0, item[0][1])
    ):
        label = f"0x{code:04X} {text or reason_text(code)}" if code is not None else text
        rows.append((f"  {label}", str(n)))
    rows += [
        (
            "bytes",
            f"{tally.stored_bytes / MB:.1f} MB stored, {tally.sent_bytes / MB:.1f} MB sent",
        ),
        ("time", f"{seconds:.2f} s"),
        (
            "rate",
            (
                f"{rate(tally.stored_bytes / MB, seconds):.1f} MB/s, "
                f"{rate(tally.stored, seconds):.1f} instances/s"
            ),
        ),
        ("retries", str(tally.retries)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# Exit statuses (docs/UPLOAD.md, "Exit status").
EXIT_ALL_STORED = 0
EXIT_SOME_FAILED = 1
EXIT_NOTHING_SENT = 2  # usage errors, and a stop before anything was stored


def exit_status(tally: Tally, fatal: str | None) -> int:
    """0: every DICOM file stored or already stored; 1: some failed (or the run
    stopped after storing some); 2: the run stopped before anything was stored."""
    if fatal is not None:
        return EXIT_NOTHING_SENT if tally.stored == 0 else EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if tally.failed_total else EXIT_ALL_STORED
