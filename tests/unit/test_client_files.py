"""stow-upload's file discovery: DICOM by content, the header's UIDs, what is skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from tests.dicom_files import CT, MR, NO_META, TEST_FILES, uids
from tests.integration.crafted import instance
from twisted_stow.client.files import (
    FileKey,
    Instance,
    Journaled,
    Skipped,
    SkipReason,
    examine,
    examine_some,
    has_dicom_magic,
    read_instance,
    walk,
)


def test_a_pydicom_file_is_read_with_its_uids() -> None:
    """CT_small.dcm gives its SOP Class, SOP Instance and Study UIDs, size and mtime."""
    found = read_instance(CT)
    assert isinstance(found, Instance)
    sop_class, sop, study, _ = uids(CT)
    assert (found.sop_class_uid, found.sop_instance_uid, found.study_instance_uid) == (
        sop_class,
        sop,
        study,
    )
    assert found.size == CT.stat().st_size
    assert found.key == FileKey.of(CT)


def test_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    """A DICOM file named notes.txt is an instance; text named x.dcm is skipped."""
    disguised = tmp_path / "notes.txt"
    disguised.write_bytes(CT.read_bytes())
    fake = tmp_path / "x.dcm"
    fake.write_text("not an image")
    assert isinstance(read_instance(disguised), Instance)
    skipped = read_instance(fake)
    assert isinstance(skipped, Skipped) and skipped.reason is SkipReason.NOT_DICOM


def test_magic_needs_the_preamble() -> None:
    """DICM counts only at offset 128 (PS3.10 §7.1)."""
    assert has_dicom_magic(bytes(128) + b"DICM")
    assert not has_dicom_magic(b"DICM" + bytes(128))
    assert not has_dicom_magic(bytes(100))


def test_no_meta_file_is_not_dicom() -> None:
    """pydicom's no_meta.dcm has no preamble: skipped as not DICOM."""
    skipped = read_instance(NO_META)
    assert isinstance(skipped, Skipped) and skipped.reason is SkipReason.NOT_DICOM


def test_dicomdir_is_skipped() -> None:
    """A DICOMDIR (Media Storage Directory SOP Class) is never uploaded."""
    dicomdir = next((TEST_FILES / "dicomdirtests").rglob("DICOMDIR"))
    skipped = read_instance(dicomdir)
    assert isinstance(skipped, Skipped) and skipped.reason is SkipReason.DICOMDIR


def test_file_without_sop_instance_uid_is_skipped(tmp_path: Path) -> None:
    """A PS3.10 file whose data set has no SOP Instance UID is skipped and says so."""
    ds = pydicom.dcmread(CT)
    del ds.SOPInstanceUID
    path = tmp_path / "no-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    skipped = read_instance(path)
    assert isinstance(skipped, Skipped) and skipped.reason is SkipReason.NO_SOP_INSTANCE_UID


def test_only_the_header_is_read(tmp_path: Path) -> None:
    """Pixel data that is cut off or garbage does not matter: reading stops before it."""
    data = instance(padding=0)
    ds = pydicom.dcmread(CT)
    at = data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: at + 12] + b"\xff" * 7)  # a header and a broken value
    found = read_instance(path)
    assert isinstance(found, Instance)
    assert found.study_instance_uid == str(ds.StudyInstanceUID)


@pytest.mark.parametrize("seed", range(5))
def test_garbage_after_the_magic_is_skipped_not_raised(tmp_path: Path, seed: int) -> None:
    """Preamble and DICM followed by random bytes: skipped (no UID or unreadable), never raised."""
    path = tmp_path / "garbage.dcm"
    rest = bytes((seed * 7919 + i * 104729) % 251 for i in range(300))
    path.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + rest)
    skipped = read_instance(path)
    assert isinstance(skipped, Skipped)
    assert skipped.reason in (SkipReason.UNREADABLE, SkipReason.NO_SOP_INSTANCE_UID)


def test_walk_recurses_in_sorted_order(tmp_path: Path) -> None:
    """Folders are walked recursively and sorted; files are yielded as given."""
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ("b/c/2", "b/1", "a", "b/c/1"):
        (tmp_path / name).write_text("x")
    extra = tmp_path / "a"
    assert [p.relative_to(tmp_path).as_posix() for p in walk([tmp_path, extra])] == [
        "a",
        "b/1",
        "b/c/1",
        "b/c/2",
        "a",
    ]


def test_journaled_files_are_not_read(tmp_path: Path) -> None:
    """A file whose path, size and mtime are journaled is Journaled; a touched one is read."""
    path = tmp_path / "ct.dcm"
    path.write_bytes(MR.read_bytes())
    key = FileKey.of(path)
    assert examine(path, {key: "1.2.3"}) == Journaled(key, "1.2.3")
    os.utime(path, ns=(key.mtime_ns + 10**9, key.mtime_ns + 10**9))
    assert isinstance(examine(path, {key: "1.2.3"}), Instance)


def test_examine_some_reports_exhaustion(tmp_path: Path) -> None:
    """examine_some takes at most ``count`` files and says when none are left."""
    for i in range(3):
        (tmp_path / f"{i}").write_text("x")
    files = walk([tmp_path])
    first, done = examine_some(files, {}, 2)
    rest, finished = examine_some(files, {}, 2)
    assert (len(first), done, len(rest), finished) == (2, False, 1, True)


def test_missing_path_is_skipped_not_raised(tmp_path: Path) -> None:
    """A path that does not exist is reported as unreadable."""
    found = examine(tmp_path / "gone.dcm", {})
    assert isinstance(found, Skipped) and found.reason is SkipReason.UNREADABLE


@pytest.mark.parametrize("path", [CT, MR])
def test_journal_key_is_absolute(path: Path) -> None:
    """Keys hold absolute paths, so a re-run from another folder matches."""
    assert Path(FileKey.of(path).path).is_absolute()


def test_the_client_starts_without_importing_pydicom() -> None:
    """stow-upload's modules import no pydicom (nor numpy): its start-up stays short."""
    import subprocess
    import sys

    probe = (
        "import sys, twisted_stow.client.command; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'numpy')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_the_pydicom_corpus_reads_as_pydicom_reads_it() -> None:
    """Every corpus file the header walk reads as an Instance has pydicom's UIDs."""
    compared = 0
    for path in sorted(TEST_FILES.glob("*.dcm")):
        found = read_instance(path)
        if not isinstance(found, Instance):
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert found.sop_instance_uid == str(ds.SOPInstanceUID).rstrip("\x00 "), path
        assert found.study_instance_uid == str(ds.get("StudyInstanceUID", "")).rstrip("\x00 ")
        compared += 1
    assert compared >= 20
