"""Real DICOM files for tests: the ones pydicom ships, located on disk.

``pydicom.data.get_testdata_files`` would try to download more; these are
read straight from the installed package.
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# Valid PS3.10 files with distinct SOP Instance UIDs, small enough for tests.
CT = TEST_FILES / "CT_small.dcm"
MR = TEST_FILES / "MR_small.dcm"
SR = TEST_FILES / "test-SR.dcm"
# SOP Instance UID differs from MediaStorageSOPInstanceUID (FailureReason 0xA900).
RTPLAN_UID_MISMATCH = TEST_FILES / "rtplan.dcm"
# Not PS3.10: no preamble or file meta (FailureReason 0xC000).
NO_META = TEST_FILES / "no_meta.dcm"


def read(path: Path) -> bytes:
    """The file's bytes."""
    return path.read_bytes()


def uids(path: Path) -> tuple[str, str, str, str]:
    """(SOP Class, SOP Instance, Study, Series) UIDs of a file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
    )


def stored_path(root: Path, path: Path) -> Path:
    """Where the server stores ``path``'s instance under ``root``."""
    _, sop, study, series = uids(path)
    return root / study / series / f"{sop}.dcm"
