"""stow-upload's pure policy: grouping into requests, retry delays, answers, journal, summary."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from twisted_stow.client.answer import NOT_IN_ANSWER, UnreadableAnswer, Verdict, judge
from twisted_stow.client.batching import group
from twisted_stow.client.files import FileKey, Instance, SkipReason
from twisted_stow.client.journal import Journal, journal_line, read_journal
from twisted_stow.client.progress import LineProgress
from twisted_stow.client.retry import (
    MAX_RETRY_AFTER_SECONDS,
    Backoff,
    is_retryable_status,
    is_transient_failure,
    parse_retry_after,
)
from twisted_stow.client.summary import Tally, exit_status, render_summary


def make(index: int, study: str, size: int, uid: str | None = None) -> Instance:
    key = FileKey(f"/data/{index}.dcm", size, index)
    return Instance(key, "1.2.840.10008.5.1.4.1.1.2", uid or f"1.2.3.{index}", study)


instances_strategy = st.lists(
    st.tuples(st.sampled_from(["1.1", "1.2", "1.3"]), st.integers(1, 1000), st.integers(0, 30)),
    max_size=60,
).map(lambda rows: [make(i, study, size, f"9.{uid}") for i, (study, size, uid) in enumerate(rows)])


@given(instances_strategy, st.integers(1, 8), st.integers(1, 3000))
def test_grouping_keeps_every_bound(
    instances: list[Instance], max_instances: int, max_bytes: int
) -> None:
    """Each instance once; one study, <= max instances, <= max bytes (or alone), unique UIDs."""
    requests = group(instances, max_instances, max_bytes)
    assert sorted(i.key.mtime_ns for r in requests for i in r) == list(range(len(instances)))
    for request in requests:
        assert len({i.study_instance_uid for i in request}) == 1
        assert len(request) <= max_instances
        assert sum(i.size for i in request) <= max_bytes or len(request) == 1
        assert len({i.sop_instance_uid for i in request}) == len(request)


def test_grouping_fills_requests_in_order() -> None:
    """Two studies interleaved: requests per study, in file order, split at max instances."""
    files = [make(i, "A" if i % 2 else "B", 10) for i in range(7)]
    requests = group(files, max_instances=2)
    assert [[i.key.mtime_ns for i in r] for r in requests] == [[0, 2], [1, 3], [4, 6], [5]]


@given(st.integers(1, 20), st.floats(0, 0.999))
def test_backoff_is_jittered_and_capped(attempt: int, draw: float) -> None:
    """Full jitter: below min(30 s, 0.5 s * 2**(attempt-1)), scaled by the random draw."""
    delay = Backoff(lambda: draw).delay(attempt)
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    assert 0 <= delay < ceiling or delay == 0
    assert abs(delay - draw * ceiling) < 1e-9


def test_retry_after_is_a_floor() -> None:
    """A Retry-After of 3 s waits at least 3 s; hours are capped."""
    backoff = Backoff(lambda: 0.5)
    assert 3.0 <= backoff.delay(1, 3.0) < 3.3
    assert backoff.delay(1, 10**6) < MAX_RETRY_AFTER_SECONDS + 1


def test_retry_after_both_forms() -> None:
    """Delay-seconds and HTTP-date (RFC 9110 §10.2.3); junk is ignored."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert parse_retry_after("7", now.timestamp()) == 7.0
    assert parse_retry_after(later, now.timestamp()) == 42.0
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after(None, now.timestamp()) is None


def test_what_is_retried() -> None:
    """408/429/503/504 and FailureReasons 0xA700/0x0110 are transient; the rest are not."""
    assert all(is_retryable_status(s) for s in (408, 429, 503, 504))
    assert not any(is_retryable_status(s) for s in (200, 400, 401, 409, 413, 500))
    assert is_transient_failure(0xA700) and is_transient_failure(0x0110)
    assert not any(is_transient_failure(c) for c in (0xC000, 0xA900, 0x0111, 0x0122, None))


def _answer(stored: dict[str, int | None], failed: dict[str, int]) -> bytes:
    def item(uid: str, tag: str, reason: int | None) -> dict[str, object]:
        entry: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
        if reason is not None:
            entry[tag] = {"vr": "US", "Value": [reason]}
        return entry

    model = {
        "00081199": {"vr": "SQ", "Value": [item(u, "00081196", r) for u, r in stored.items()]},
        "00081198": {"vr": "SQ", "Value": [item(u, "00081197", r) for u, r in failed.items()]},
    }
    return json.dumps(model).encode()


def test_judge_per_instance() -> None:
    """Stored, transient failure, permanent failure and unmentioned, each judged on its own."""
    body = _answer({"1": None, "2": 0xB000}, {"3": 0xA700, "4": 0xA900})
    outcomes = judge(["1", "2", "3", "4", "5"], body)
    assert [o.verdict for o in outcomes] == [
        Verdict.STORED,
        Verdict.STORED,
        Verdict.RETRY,
        Verdict.FAILED,
        Verdict.RETRY,
    ]
    assert outcomes[1].reason == 0xB000 and outcomes[3].reason == 0xA900
    assert outcomes[4].text == NOT_IN_ANSWER
    assert judge(["5"], body, status=400)[0].verdict is Verdict.FAILED  # Orthanc's refusal


def test_judge_rejects_what_is_no_response() -> None:
    """An empty or non-JSON body is UnreadableAnswer, not "nothing stored"."""
    for body in (b"", b"<html>", b"[1, 2]"):
        try:
            judge(["1"], body)
        except UnreadableAnswer:
            continue
        raise AssertionError(f"{body!r} was accepted")


def test_journal_round_trip_survives_a_cut_line(tmp_path: Path) -> None:
    """Recorded entries read back; a cut-off last line is ignored and not glued to the next."""
    path = tmp_path / "journal"
    first, second, third = make(1, "A", 5), make(2, "A", 6), make(3, "A", 7)
    journal = Journal(path)
    journal.record([first, second])
    journal.close()
    with open(path, "a") as file:
        file.write(journal_line(third)[:20])  # killed mid-write
    again = Journal(path)
    assert set(again.done) == {first.key, second.key}
    again.record([third])
    again.close()
    assert read_journal(path)[third.key] == third.sop_instance_uid


def test_exit_status() -> None:
    """0 all stored, 1 some failed or stopped after storing, 2 stopped before storing."""
    tally = Tally(found=2, stored=2)
    assert exit_status(tally, None) == 0
    tally.failed[(0xA900, "x")] += 1
    assert exit_status(tally, None) == 1
    assert exit_status(tally, "401") == 1
    assert exit_status(Tally(found=3), "cannot reach") == 2


def test_summary_names_every_count() -> None:
    """The summary shows found, skipped by reason, stored, already stored, failures by reason."""
    tally = Tally(found=5, found_bytes=5_000_000, stored=3, stored_bytes=3_000_000)
    tally.already_stored = 1
    tally.skipped[SkipReason.DICOMDIR] += 1
    tally.failed[(0xA900, "study mismatch")] += 1
    text = render_summary(tally, 2.0)
    for expected in (
        "found",
        "5 DICOM files",
        "DICOMDIR",
        "stored ",
        "already stored",
        "0xA900 study mismatch",
        "1.5 MB/s",
        "1.5 instances/s",
        "2.00 s",
    ):
        assert expected in text, expected


def test_plain_progress_line_counts_what_this_run_sends() -> None:
    """The plain progress line: stored of those to send (the journal's excluded), MB and MB/s."""
    clock = Clock()
    tally = Tally(found=5, found_bytes=5_000_000, stored=2, stored_bytes=2_000_000)
    tally.already_stored, tally.already_stored_bytes = 1, 1_000_000
    out = io.StringIO()
    progress = LineProgress(clock, tally, lambda: 500_000, out)
    clock.advance(2.0)
    progress.draw()
    assert out.getvalue() == (
        "stow-upload: 2/4 instances, 2.5/4.0 MB, 1.0 MB/s, 0 retries, 0 failed\n"
    )
