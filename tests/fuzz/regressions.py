"""Inputs the fuzzers found that once broke a property: replayed by every suite run.

Each entry: what it is, then the arguments of its ``properties.check_*``.
"""

from __future__ import annotations

from tests.attacks import item_bomb

# (boundary, body, cuts) for check_multipart.
MULTIPART: list[tuple[bytes, bytes, list[int]]] = [
    # A delimiter cut inside its transport padding, then a bare CR: undecided, then payload.
    (b"b", b"--b \r\n\r\nx\r\n--b \r", [5, 13]),
    # An empty part whose header CRLF is the next delimiter's.
    (b"b", b"--b\r\n\r\n--b--", [3, 5, 6]),
]
# (data, cuts, step budgets) for check_header_capture.
HEADER_CAPTURE: list[tuple[bytes, list[int], list[int]]] = [
    # The issue-17 bomb past the element limit, walked in steps of every size.
    (item_bomb(items=70_000), [100, 500, 900], [1, 7, 1024, 3]),
    # Found by test_header_capture: a step budget spent on the last File Meta
    # element left the switch to the data set pending forever.
    (
        bytes(128) + b"DICM\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
        b"\x08\x00\x18\x00\xff\xff\xff\xff",
        [],
        [1, 1, 1, 1],
    ),
    # Found by test_header_capture in CI: an empty wanted value (SOP Class UID,
    # length 0) at the very end of a part, the step budget spent on its
    # header, read as a cut value ("...") instead of "".
    (
        bytes(128) + b"DICM\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
        b"\x08\x00\x16\x00UI\x00\x00",
        [],
        [1, 1, 1, 1, 1],
    ),
    # Deflated, then cut in the middle of the deflate stream.
    (item_bomb(items=40)[:180], [140, 150], [1, 1, 1, 1]),
]
# Values for check_media_types.
MEDIA_TYPES: list[str] = ['"' + '\\"' * 200, "multipart/related; boundary=", "a/b;" * 50]
