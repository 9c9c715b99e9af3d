"""The benchmark studies: valid DICOM files written by pydicom into a temp dir.

A study is a list of series, each ``count`` instances of ``size`` bytes.  The
files are Secondary Capture instances from ``_dicom.py`` (pydicom header,
streamed pixel bytes, trailing padding to the exact size), one file per
instance, so clients send them from disk like a real archive would.  Nothing
here is committed: ``generate`` writes them under the benchmark's temp dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from benchmarks._dicom import write_part

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Instance:
    """One DICOM file: ``header`` (pydicom's part, with the UIDs) is kept in
    memory so a variant can change the UIDs; the rest is sent from ``path``."""

    path: Path
    size: int
    sop_instance_uid: str
    header: bytes


@dataclass(frozen=True, slots=True)
class Study:
    name: str
    study_instance_uid: str
    instances: tuple[Instance, ...]

    @property
    def bytes(self) -> int:
        return sum(instance.size for instance in self.instances)

    def variant(self, tag: int) -> Study:
        """The same files with new UIDs: the last digits of every UID made
        here become ``tag``, in the in-memory headers only (same lengths).

        Every run sends new instances, so nothing has to be deleted between
        runs: deleting thousands of files makes this (journal-less) ext4
        skip recently freed inodes on every later create, which cost the
        servers a fifth of their CPU in a profile.
        """
        if not 0 <= tag < 10**_TAG_DIGITS:
            raise ValueError(f"tag must have at most {_TAG_DIGITS} digits")
        cache: dict[str, str] = {}

        def retag(uid: str) -> str:
            if uid not in cache:
                cache[uid] = uid[:-_TAG_DIGITS] + f"{tag:0{_TAG_DIGITS}d}"
            return cache[uid]

        instances = []
        for instance in self.instances:
            header = instance.header
            for uid in _uids_in(header, self.study_instance_uid, instance.sop_instance_uid):
                header = header.replace(uid.encode(), retag(uid).encode())
            instances.append(
                Instance(instance.path, instance.size, retag(instance.sop_instance_uid), header)
            )
        return Study(self.name, retag(self.study_instance_uid), tuple(instances))

    def split(self, requests: int) -> list[tuple[Instance, ...]]:
        """The instances dealt into ``requests`` contiguous groups (one POST each)."""
        requests = max(1, min(requests, len(self.instances)))
        base, extra = divmod(len(self.instances), requests)
        groups, start = [], 0
        for index in range(requests):
            stop = start + base + (1 if index < extra else 0)
            groups.append(self.instances[start:stop])
            start = stop
        return groups


_TAG_DIGITS = 3
_SERIES_PREFIX = b"\x20\x00\x0e\x00UI"  # (0020,000E) Series Instance UID, Explicit VR LE


def _uids_in(header: bytes, study: str, sop: str) -> list[str]:
    """The UIDs made here that ``header`` holds: study, series and SOP instance."""
    at = header.index(_SERIES_PREFIX) + len(_SERIES_PREFIX)
    length = int.from_bytes(header[at : at + 2], "little")
    series = header[at + 2 : at + 2 + length].rstrip(b"\x00").decode()
    return [study, series, sop]


# name -> [(instances, bytes each), ...] (one series per entry)
FULL = {
    # 20 x 50 MiB: large multi-frame objects (mammography, US cine, WSI levels)
    "large": [(20, 50 * MIB)],
    # 1000 x 512 KiB: a CT series
    "ct": [(1000, 512 * KIB)],
    # a study as it arrives from a modality plus its derived objects: two
    # large multi-frame, a 300-slice CT series and 50 small SR/KO-sized objects
    "mixed": [(2, 50 * MIB), (300, 512 * KIB), (50, 16 * KIB)],
    # for the peak RSS target: one request of more than 4 GiB
    "huge": [(82, 50 * MIB)],
    # the workers scenario (issue 12): 16 CT series of one study, one per client
    "ct16": [(64, 512 * KIB)] * 16,
}
# A quarter of the full size, same shapes: a check of the full machinery in
# a minute or two, not figures to publish.
MEDIUM = {
    "large": [(5, 50 * MIB)],
    "ct": [(250, 512 * KIB)],
    "mixed": [(1, 50 * MIB), (75, 512 * KIB), (13, 16 * KIB)],
    "huge": [(20, 50 * MIB)],
    "ct16": [(16, 512 * KIB)] * 16,
}
# Seconds in CI: same shapes, tiny sizes (the concurrency runs need 64 requests).
TINY = {
    "large": [(3, 2 * MIB)],
    "ct": [(64, 32 * KIB)],
    "mixed": [(1, 2 * MIB), (10, 64 * KIB), (5, 4 * KIB)],
    "huge": [(4, 2 * MIB)],
    "ct16": [(4, 32 * KIB)] * 16,
}


def generate(root: Path, name: str, series: list[tuple[int, int]]) -> Study:
    """Write study ``name`` under ``root/name`` with fresh UIDs."""
    directory = root / name
    directory.mkdir(parents=True)
    study_uid = generate_uid()
    instances = []
    for count, size in series:
        series_uid = generate_uid()
        for _ in range(count):
            path = directory / f"{len(instances):05d}.dcm"
            part = write_part(str(path), size, study_uid, series_uid)
            instances.append(Instance(path, size, part.sop_instance_uid, part.header))
    return Study(name, study_uid, tuple(instances))


def remove(study: Study) -> None:
    for instance in study.instances:
        os.unlink(instance.path)
