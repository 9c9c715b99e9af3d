"""Folders for the stow-upload tests: pydicom's corpus, synthetic studies, junk; and the command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.dicom_files import NO_META, TEST_FILES
from tests.integration.crafted import instance
from twisted_stow.client.files import Instance, read_instance

UPLOAD_TIMEOUT_SECONDS = 120
# Orthanc 1.10 answers 400 to these two (its log: DCMTK "cannot parse an
# invalid DICOM file", and "missing a mandatory tag"); every other file of the
# corpus both servers store.
ORTHANC_REFUSES = frozenset({"SC_rgb_jpeg.dcm", "rtdose_rle.dcm"})


def corpus() -> list[Path]:
    """pydicom's PS3.10 files that a valid archive could hold together: the first
    file of each SOP Instance UID (its other files are other encodings of the
    same instance, a conflicting duplicate), with a Study and Series Instance
    UID, and the File Meta's SOP Instance UID matching the data set's."""
    chosen: dict[str, Path] = {}
    taken: set[str] = set()  # every UID seen, the refused files' included
    for path in sorted(TEST_FILES.glob("*.dcm")):
        found = read_instance(path)
        if not isinstance(found, Instance) or found.sop_instance_uid in taken:
            continue
        taken.add(found.sop_instance_uid)
        if path.name in ORTHANC_REFUSES:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
        if (
            meta_uid == found.sop_instance_uid
            and found.study_instance_uid
            and ds.get("SeriesInstanceUID")
        ):
            chosen[found.sop_instance_uid] = path
    return list(chosen.values())


def build_folder(root: Path, *, studies: int = 3, per_study: int = 4) -> tuple[list[Path], int]:
    """A nested folder: the corpus, ``studies`` synthetic studies, and junk.

    Returns (the DICOM files to be stored, the number of junk files).
    """
    dicom: list[Path] = []
    for path in corpus():
        target = root / "corpus" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        dicom.append(target)
    for s in range(studies):
        study, series = generate_uid(), generate_uid()
        folder = root / "studies" / f"study{s}" / "series" / "deeper"
        folder.mkdir(parents=True)
        for i in range(per_study):
            target = folder / f"IM{i:04d}"  # no extension: found by content
            target.write_bytes(
                instance(StudyInstanceUID=study, SeriesInstanceUID=series, padding=i * 3000)
            )
            dicom.append(target)
    junk = root / "junk"
    junk.mkdir()
    (junk / "README.txt").write_text("not DICOM\n")
    (junk / "empty.dcm").write_bytes(b"")
    shutil.copyfile(NO_META, junk / "no_meta.dcm")
    shutil.copyfile(next((TEST_FILES / "dicomdirtests").rglob("DICOMDIR")), junk / "DICOMDIR")
    return dicom, 4


def synthetic(
    folder: Path, count: int, *, padding: int = 0, study: str | None = None
) -> list[Path]:
    """``count`` fresh instances of one study (``study`` or a new UID) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    series = generate_uid()
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.dcm"
        path.write_bytes(
            instance(StudyInstanceUID=study, SeriesInstanceUID=series, padding=padding)
        )
        paths.append(path)
    return paths


def stow_upload_command() -> list[str]:
    """The installed console script beside this interpreter."""
    return [str(Path(sys.executable).with_name("stow-upload"))]


def upload(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``stow-upload ARGS`` to the end; its exit status, stdout and stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STOW_")}
    environment.update(env or {})
    return subprocess.run(
        [*stow_upload_command(), *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        input=stdin if stdin is not None else "",
        timeout=UPLOAD_TIMEOUT_SECONDS,
    )


def report_lines(path: Path) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def summary_value(stdout: str, label: str) -> str:
    """The value of a summary row (``stored``, ``retries``, ...)."""
    for line in stdout.splitlines():
        if line.startswith(label + " "):
            return line[len(label) :].strip()
    raise AssertionError(f"no {label!r} row in:\n{stdout}")


__all__: Sequence[str] = [
    "build_folder",
    "corpus",
    "report_lines",
    "summary_value",
    "synthetic",
    "upload",
]
