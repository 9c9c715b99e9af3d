"""The fuzzing properties of the pure core: only documented errors, bounded buffers.

Each ``check_*`` takes an input and the places to split it, runs the target
and fails (AssertionError) if it raises anything but its documented errors,
holds more than its documented buffer, or gives a result that depends on the
splits.  No pytest or hypothesis here: the long runner and the regression
tests call these directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tests.helpers import coalesce
from twisted_stow.core.dicomheader import MAX_BUFFERED_BYTES, DicomHeader, HeaderCapture
from twisted_stow.core.errors import StowError
from twisted_stow.core.mediatype import negotiate, parse_media_type, reader_for, split_list
from twisted_stow.core.multipart import (
    MAX_HEADER_BLOCK_BYTES,
    MAX_TRANSPORT_PADDING_BYTES,
    Event,
    MultipartParser,
)
from twisted_stow.core.outcomes import Failed, FailureReason
from twisted_stow.core.singlepart import SinglePartReader


def pieces(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` split at ``cuts`` (any order, repeats and out-of-range ones allowed)."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def run_reader(
    reader: MultipartParser | SinglePartReader, chunks: Sequence[bytes], max_buffered: int
) -> tuple[list[Event], type[StowError] | None]:
    """Feed ``chunks`` then close; the events and the StowError type it ended with."""
    events: list[Event] = []
    try:
        for chunk in chunks:
            for event in reader.events(chunk):
                events.append(event)
            assert reader.buffered_bytes <= max_buffered, reader.buffered_bytes
        events += reader.close()
    except StowError as error:
        return coalesce(events), type(error)
    return coalesce(events), None


def multipart_buffer_cap(boundary: bytes, max_header_bytes: int = MAX_HEADER_BLOCK_BYTES) -> int:
    """What ``MultipartParser`` may hold: a header block, or an undecided delimiter line."""
    delimiter_line = len(b"\r\n--" + boundary) + MAX_TRANSPORT_PADDING_BYTES + 2
    return max_header_bytes + 2 + delimiter_line


def check_multipart(boundary: bytes, body: bytes, cuts: Sequence[int]) -> None:
    """Arbitrary body, any split: only StowError, bounded buffer, same result as whole."""
    cap = multipart_buffer_cap(boundary)
    whole = run_reader(MultipartParser(boundary), [body], cap)
    split = run_reader(MultipartParser(boundary), pieces(body, cuts), cap)
    if whole[1] is None and split[1] is None:
        assert whole == split
    else:
        # Damage is found wherever the body is cut, and every event before it
        # is delivered; a split body may deliver more of them (a part whose
        # close arrived in an earlier piece), never different ones.
        assert whole[1] is not None and whole[1] == split[1], (whole[1], split[1])


def check_single_part(body: bytes, cuts: Sequence[int]) -> None:
    """A bare body, any split: never an error, nothing held, the bytes come out whole."""
    events, error = run_reader(SinglePartReader(), pieces(body, cuts), 0)
    assert error is None
    assert events == run_reader(SinglePartReader(), [body], 0)[0]


def check_media_types(value: str) -> None:
    """Content-Type and Accept parsing: a result or a StowError, nothing else."""
    for parse in (parse_media_type, reader_for, negotiate):
        try:
            parse(value)
        except StowError:
            pass
    elements = split_list(value)
    # Splitting only removes separators: the elements and commas are the value.
    assert ",".join(elements) == value


def check_header_capture(data: bytes, cuts: Sequence[int], step_budgets: Sequence[int]) -> None:
    """Any part, any split, any step budget: the same verdict, bounded copies."""
    expected = _capture(data, [data], [])
    assert isinstance(expected, DicomHeader) or (
        isinstance(expected, Failed) and expected.reason is FailureReason.CANNOT_UNDERSTAND
    ), expected
    assert _capture(data, pieces(data, cuts), step_budgets) == expected


def _capture(data: bytes, chunks: Sequence[bytes], budgets: Sequence[int]) -> DicomHeader | Failed:
    capture = HeaderCapture()
    budget = iter(budgets)
    for chunk in chunks:
        capture.feed(chunk, max_steps=next(budget, None))
        assert capture.buffered_bytes <= MAX_BUFFERED_BYTES, capture.buffered_bytes
        while capture.pending:
            capture.run(next(budget, None))
            assert capture.buffered_bytes <= MAX_BUFFERED_BYTES, capture.buffered_bytes
    return capture.result()
