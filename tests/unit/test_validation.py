"""Tests for validation.py and the header capture of dicomheader.py.

They go through ``_validate``, which streams a real pydicom test file (or a
file written here) through ``HeaderCapture`` in pieces, as ingest does, and
judges the captured header; tests/unit/test_header_capture.py holds the
capture's own properties and limits.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom import config
from pydicom._uid_dict import UID_dictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from twisted_stow.core import dicomheader
from twisted_stow.core.outcomes import Failed, FailureReason, InstanceRef
from twisted_stow.core.validation import (
    DEFAULT_POLICY,
    ValidationPolicy,
    default_sop_classes,
    default_transfer_syntaxes,
    validate_bytes,
    validate_header,
)
from twisted_stow.upload import READ_SIZE_BYTES

# Read straight from the installed package: get_testdata_files() may download.
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CT = TEST_FILES / "CT_small.dcm"
MR = TEST_FILES / "MR_small.dcm"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.3"

PIXEL_BYTES = 50 * 1024 * 1024
# What one socket read hands ingest at most.
PIECE_BYTES = READ_SIZE_BYTES


def _validate_data(data: bytes, policy: ValidationPolicy = DEFAULT_POLICY) -> InstanceRef | Failed:
    """Stream ``data`` through a capture in socket-read pieces and judge its header."""
    capture = dicomheader.HeaderCapture()
    view = memoryview(data)
    for offset in range(0, len(view), PIECE_BYTES):
        capture.feed(view[offset : offset + PIECE_BYTES])
    return validate_header(capture.result(), policy)


def _validate(path: Path, policy: ValidationPolicy = DEFAULT_POLICY) -> InstanceRef | Failed:
    """The verdict on the file at ``path`` sent as one part."""
    return _validate_data(path.read_bytes(), policy)


def _uids(path: Path) -> InstanceRef:
    """What pydicom itself reads as the file's four UIDs."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return InstanceRef(
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
    )


def _dataset() -> Dataset:
    """A minimal CT data set with the four UIDs."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_INSTANCE
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    return ds


def _set_raw(ds: Dataset, tag: int, value: str) -> None:
    """Set a UI element to ``value`` without pydicom's value validation."""
    ds.add(DataElement(tag, "UI", value, validation_mode=config.IGNORE))


def _write(path: Path, ds: Dataset, *, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` as a PS3.10 file; pydicom copies its SOP UIDs into the File Meta."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    # Kept only when ``ds`` lacks the UID: PS3.10 requires both in the File Meta.
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(SOP_INSTANCE)
    ds.save_as(path, enforce_file_format=True)
    return path


def _replace_first(path: Path, old: str, new: str) -> None:
    """Replace the first (File Meta) occurrence of UID ``old`` by one of equal length."""
    assert len(_padded(old)) == len(_padded(new))
    data = path.read_bytes()
    assert _padded(old) in data
    path.write_bytes(data.replace(_padded(old), _padded(new), 1))


def _meta_only(path: Path, transfer_syntax: str, body: bytes) -> Path:
    """A preamble, a File Meta group for ``transfer_syntax``, then ``body`` verbatim."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(SOP_INSTANCE)
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(bytes(128) + b"DICM" + buffer.getvalue() + body)
    return path


def _ui(tag: int, uid: str) -> bytes:
    """An Explicit VR Little Endian UI element."""
    value = _padded(uid)
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(value)) + value


def _padded(uid: str) -> bytes:
    """A UI value as written: NUL-padded to even length (PS3.5 §6.2)."""
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


def _pixels(ds: Dataset, size: int) -> None:
    """Give ``ds`` an image pixel module with ``size`` bytes of Pixel Data."""
    ds.Rows = 1024
    ds.Columns = size // 1024 // 2
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(size)


def _peak_bytes(path: Path) -> tuple[InstanceRef | Failed, int]:
    """Validate ``path`` and return the outcome with the peak traced allocation
    (the part's own bytes, read before tracing starts, not included)."""
    data = path.read_bytes()
    tracemalloc.start()
    try:
        outcome = _validate_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


def _failed(outcome: InstanceRef | Failed) -> Failed:
    """``outcome`` as a Failed (the test fails if it is not one)."""
    assert isinstance(outcome, Failed), outcome
    return outcome


# --- valid files ---------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # Explicit VR Little Endian
        "MR_small.dcm",
        "MR_small_implicit.dcm",  # Implicit VR Little Endian
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
        "image_dfl.dcm",  # Deflated Explicit VR Little Endian
        "JPEG2000.dcm",  # encapsulated Pixel Data
        "test-SR.dcm",  # a Structured Report: no Pixel Data at all
    ],
)
def test_valid_files_give_their_uids(name: str) -> None:
    """Valid PS3.10 files in every encoding give the UIDs pydicom reads, silently."""
    path = TEST_FILES / name
    assert _validate(path) == _uids(path)


def test_accepts_bytes_and_memoryview() -> None:
    """A whole part as bytes or as a memoryview gives the same UIDs."""
    data = CT.read_bytes()
    assert validate_bytes(data) == validate_bytes(memoryview(data)) == _uids(CT)


def test_written_file_is_valid(tmp_path: Path) -> None:
    """The minimal data set these tests start from is itself valid."""
    path = _write(tmp_path / "ok.dcm", _dataset())
    assert _validate(path) == InstanceRef(CT_IMAGE_STORAGE, SOP_INSTANCE, STUDY, SERIES)


def test_truncated_file_still_validates(tmp_path: Path) -> None:
    """A file cut inside its Pixel Data passes: completeness is the parser's job."""
    data = CT.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 1000])
    assert _validate(path) == _uids(CT)


def test_trailing_space_padding_is_tolerated(tmp_path: Path) -> None:
    """A UID padded with a space instead of a NUL (a common writer bug) is accepted."""
    ds = _dataset()
    _set_raw(ds, 0x0020000D, "1.2.3.45 ")
    assert isinstance(_validate(_write(tmp_path / "sp.dcm", ds)), InstanceRef)


# --- not a PS3.10 file: 0xC000 ---------------------------------------------------


def test_no_meta_file_cannot_be_understood() -> None:
    """A data set without preamble and File Meta (no_meta.dcm) is 0xC000 without UIDs."""
    failed = _failed(_validate(TEST_FILES / "no_meta.dcm"))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert "DICM" in failed.detail
    assert failed.sop_class_uid is None
    assert failed.sop_instance_uid is None


def test_empty_file_cannot_be_understood(tmp_path: Path) -> None:
    """An empty part is 0xC000 without UIDs."""
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    failed = _failed(_validate(path))
    assert failed == Failed(FailureReason.CANNOT_UNDERSTAND, "empty part")


@pytest.mark.parametrize("size", [1, 100, 131, 132, 4096])
def test_random_bytes_cannot_be_understood(tmp_path: Path, size: int) -> None:
    """Random bytes, shorter or longer than the preamble, are 0xC000 without UIDs."""
    path = tmp_path / "random.bin"
    path.write_bytes(random.Random(size).randbytes(size))
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (None, None)


def test_wrong_prefix_cannot_be_understood(tmp_path: Path) -> None:
    """A preamble followed by anything but "DICM" is 0xC000."""
    data = bytearray(CT.read_bytes())
    data[128:132] = b"DICN"
    path = tmp_path / "prefix.dcm"
    path.write_bytes(bytes(data))
    assert _failed(_validate(path)).reason == FailureReason.CANNOT_UNDERSTAND


def test_missing_transfer_syntax_cannot_be_understood() -> None:
    """File Meta without Transfer Syntax UID (0002,0010) is 0xC000 without UIDs."""
    failed = _failed(_validate(TEST_FILES / "meta_missing_tsyntax.dcm"))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert "(0002,0010)" in failed.detail
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (None, None)


def test_malformed_data_set_cannot_be_understood(tmp_path: Path) -> None:
    """A data set pydicom cannot parse (a sequence cut inside an item tag) is 0xC000."""
    body = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + b"\xfe\xff"
    path = _meta_only(tmp_path / "bad.dcm", ExplicitVRLittleEndian, body)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert failed.detail.startswith("unreadable DICOM data: ")
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (None, None)


def test_corrupt_deflate_stream_cannot_be_understood(tmp_path: Path) -> None:
    """A deflated data set that is not a valid deflate stream is 0xC000."""
    path = _meta_only(tmp_path / "dfl.dcm", DeflatedExplicitVRLittleEndian, b"\xff" * 64)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert "deflate" in failed.detail


# --- UIDs missing, invalid or inconsistent: 0xA900 ------------------------------


def test_missing_study_uid_does_not_match(tmp_path: Path) -> None:
    """No Study Instance UID is 0xA900, reported with the SOP Class/Instance UIDs."""
    ds = _dataset()
    del ds.StudyInstanceUID
    failed = _failed(_validate(_write(tmp_path / "nostudy.dcm", ds)))
    assert failed == Failed(
        FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        "Study Instance UID (0020,000D) is missing",
        CT_IMAGE_STORAGE,
        SOP_INSTANCE,
    )


def test_every_missing_uid_is_listed(tmp_path: Path) -> None:
    """A data set with none of the four UIDs is 0xA900 naming each, without UIDs."""
    ds = Dataset()
    ds.PatientName = "Nobody"
    failed = _failed(_validate(_write(tmp_path / "none.dcm", ds)))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    for tag in ("(0008,0016)", "(0008,0018)", "(0020,000D)", "(0020,000E)"):
        assert f"{tag} is missing" in failed.detail
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (None, None)


def test_empty_uid_in_implicit_vr_is_missing(tmp_path: Path) -> None:
    """A zero-length SOP Instance UID in Implicit VR counts as missing (0xA900)."""
    ds = _dataset()
    ds.SOPInstanceUID = ""
    path = _write(tmp_path / "empty.dcm", ds, transfer_syntax=ImplicitVRLittleEndian)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert failed.detail == "SOP Instance UID (0008,0018) is missing"
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (CT_IMAGE_STORAGE, None)


def test_leading_zero_uids_need_the_option(tmp_path: Path) -> None:
    """Leading-zero components (PS3.5 §9.1 forbids them): 0xA900, unless the policy accepts them."""
    ds = _dataset()
    _set_raw(ds, 0x00080018, "1.02.3")
    _set_raw(ds, 0x0020000D, "01.2")
    _set_raw(ds, 0x0020000E, "1.2.00")
    path = _write(tmp_path / "zero.dcm", ds)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOP Instance UID (0008,0018) is not a valid UID: '1.02.3'" in failed.detail
    assert "Study Instance UID (0020,000D) is not a valid UID: '01.2'" in failed.detail
    lenient = ValidationPolicy(
        DEFAULT_POLICY.allowed_sop_classes,
        DEFAULT_POLICY.allowed_transfer_syntaxes,
        accept_leading_zero_uids=True,
    )
    outcome = _validate(path, lenient)
    assert outcome == InstanceRef(CT_IMAGE_STORAGE, "1.02.3", "01.2", "1.2.00")


@pytest.mark.parametrize("value", ["1..3", "1.3.", ".1.3", ".."])
def test_empty_uid_component_does_not_match(tmp_path: Path, value: str) -> None:
    """A SOP Instance UID with an empty component is 0xA900 without that UID."""
    ds = _dataset()
    _set_raw(ds, 0x00080018, value)
    failed = _failed(_validate(_write(tmp_path / "dots.dcm", ds)))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert repr(value) in failed.detail
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (CT_IMAGE_STORAGE, None)


def test_65_character_study_uid_does_not_match(tmp_path: Path) -> None:
    """A 65-character Study Instance UID is 0xA900, with both SOP UIDs reported."""
    ds = _dataset()
    _set_raw(ds, 0x0020000D, "1." + "2" * 63)
    failed = _failed(_validate(_write(tmp_path / "long.dcm", ds)))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "(0020,000D) is not a valid UID" in failed.detail
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (
        CT_IMAGE_STORAGE,
        SOP_INSTANCE,
    )


def test_invalid_sop_class_uid_is_not_reported(tmp_path: Path) -> None:
    """An invalid SOP Class UID is 0xA900 that carries only the SOP Instance UID."""
    ds = _dataset()
    _set_raw(ds, 0x00080016, "1.2.840.CT")
    path = _write(tmp_path / "class.dcm", ds)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (None, SOP_INSTANCE)


def test_multi_valued_uid_does_not_match(tmp_path: Path) -> None:
    """Two values in Series Instance UID ("a\\b") are not a UID: 0xA900."""
    ds = _dataset()
    _set_raw(ds, 0x0020000E, "1.2.3\\1.2.4")
    failed = _failed(_validate(_write(tmp_path / "multi.dcm", ds)))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "(0020,000E) is not a valid UID" in failed.detail


def test_uid_encoded_as_sequence_does_not_match(tmp_path: Path) -> None:
    """A SOP Instance UID element declared as a sequence is not a UID: 0xA900."""
    sequence = (
        struct.pack("<HH2sHI", 0x0008, 0x0018, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # one empty item
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)  # sequence delimiter
    )
    body = (
        _ui(0x00080016, CTImageStorage)
        + sequence
        + _ui(0x0020000D, STUDY)
        + _ui(0x0020000E, SERIES)
    )
    failed = _failed(_validate(_meta_only(tmp_path / "sq.dcm", ExplicitVRLittleEndian, body)))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert failed.detail == "SOP Instance UID (0008,0018) is not a valid UID: '<Sequence>'"
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (CT_IMAGE_STORAGE, None)


def test_sop_class_differs_from_media_storage_sop_class(tmp_path: Path) -> None:
    """SOP Class UID differing from MediaStorageSOPClassUID is 0xA900 with the UIDs."""
    path = _write(tmp_path / "class.dcm", _dataset())
    _replace_first(path, CTImageStorage, MRImageStorage)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "(0002,0002)" in failed.detail
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (
        CT_IMAGE_STORAGE,
        SOP_INSTANCE,
    )


def test_sop_instance_differs_from_media_storage_sop_instance() -> None:
    """rtplan.dcm's SOP Instance UID differs from its File Meta's: 0xA900 with UIDs."""
    path = TEST_FILES / "rtplan.dcm"
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "(0002,0003)" in failed.detail
    expected = _uids(path)
    assert failed.sop_class_uid == expected.sop_class_uid
    assert failed.sop_instance_uid == expected.sop_instance_uid


def test_uid_rules_come_before_policy(tmp_path: Path) -> None:
    """A missing UID wins over an unsupported transfer syntax and SOP Class."""
    ds = _dataset()
    del ds.SeriesInstanceUID
    policy = ValidationPolicy(frozenset(), frozenset())
    outcome = _validate(_write(tmp_path / "order.dcm", ds), policy)
    assert _failed(outcome).reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


# --- policy: 0xC122 and 0x0122 --------------------------------------------------


def test_excluded_transfer_syntax_is_not_supported() -> None:
    """A policy without CT_small's Explicit VR Little Endian gives 0xC122 with UIDs."""
    policy = ValidationPolicy(
        DEFAULT_POLICY.allowed_sop_classes,
        DEFAULT_POLICY.allowed_transfer_syntaxes - {ExplicitVRLittleEndian},
    )
    failed = _failed(_validate(CT, policy))
    assert failed.reason == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    assert "Explicit VR Little Endian" in failed.detail
    expected = _uids(CT)
    assert (failed.sop_class_uid, failed.sop_instance_uid) == (
        expected.sop_class_uid,
        expected.sop_instance_uid,
    )


def test_transfer_syntax_comes_before_sop_class() -> None:
    """With both excluded, the transfer syntax (0xC122) is reported."""
    policy = ValidationPolicy(frozenset(), frozenset())
    assert _failed(_validate(CT, policy)).reason == (FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED)


def test_unknown_transfer_syntax_is_not_supported(tmp_path: Path) -> None:
    """A transfer syntax pydicom does not know is 0xC122 under the default policy."""
    path = _write(tmp_path / "ts.dcm", _dataset())
    _replace_first(path, ExplicitVRLittleEndian, "1.2.3.4.5.6.7.8.9.10")
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    assert failed.detail == "transfer syntax 1.2.3.4.5.6.7.8.9.10 is not supported"


def test_excluded_sop_class_is_not_supported() -> None:
    """A policy without CT Image Storage gives 0x0122 with the UIDs."""
    policy = ValidationPolicy(
        DEFAULT_POLICY.allowed_sop_classes - {CT_IMAGE_STORAGE},
        DEFAULT_POLICY.allowed_transfer_syntaxes,
    )
    failed = _failed(_validate(CT, policy))
    assert failed.reason == FailureReason.SOP_CLASS_NOT_SUPPORTED
    assert "CT Image Storage" in failed.detail
    assert failed.sop_class_uid == CT_IMAGE_STORAGE
    assert failed.sop_instance_uid == _uids(CT).sop_instance_uid


# --- the default policy ---------------------------------------------------------


def test_default_policy_is_built_from_the_defaults() -> None:
    """DEFAULT_POLICY holds exactly default_sop_classes() and default_transfer_syntaxes()."""
    assert DEFAULT_POLICY == ValidationPolicy(default_sop_classes(), default_transfer_syntaxes())


@pytest.mark.parametrize(
    "uid",
    [
        CT_IMAGE_STORAGE,
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan Storage
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF Storage
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    ],
)
def test_default_sop_classes_include_storage(uid: str) -> None:
    """Storage SOP Classes, retired ones included, are allowed by default."""
    assert uid in default_sop_classes()


@pytest.mark.parametrize(
    "uid",
    [
        STORAGE_COMMITMENT_PUSH,
        "1.2.840.10008.1.20.2",  # Storage Commitment Pull Model (Retired)
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage (DICOMDIR)
        "1.2.840.10008.1.1",  # Verification
        "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve - FIND
        "1.2.840.10008.1.2.1",  # a transfer syntax, not a SOP Class
    ],
)
def test_default_sop_classes_exclude_non_storage(uid: str) -> None:
    """Storage Commitment, the DICOMDIR and non-storage classes are not allowed."""
    assert uid not in default_sop_classes()


@pytest.mark.parametrize(
    "uid",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (Retired)
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.5",  # RLE Lossless
    ],
)
def test_default_transfer_syntaxes_include(uid: str) -> None:
    """Native, deflated and encapsulated transfer syntaxes are allowed by default."""
    assert uid in default_transfer_syntaxes()


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2.4.94",  # JPIP Referenced
        "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
        "1.2.840.10008.1.2.4.204",  # JPIP HTJ2K Referenced
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
        "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME Encapsulation (Retired)
        "1.2.840.10008.1.2.6.2",  # XML Encoding (Retired)
    ],
)
def test_default_transfer_syntaxes_include_jpip_and_mime(uid: str) -> None:
    """The issue's default is every transfer syntax pydicom knows, PS3.5 §10.8 JPIP too."""
    assert uid in default_transfer_syntaxes()


def test_default_transfer_syntaxes_are_all_pydicom_knows() -> None:
    """Exactly the UIDs of type "Transfer Syntax" in pydicom's dictionary, no SOP Class."""
    known = {str(UID(key)) for key in UID_dictionary if UID(key).type == "Transfer Syntax"}
    assert default_transfer_syntaxes() == known
    assert CT_IMAGE_STORAGE not in default_transfer_syntaxes()


# --- memory: Pixel Data and large elements are never read ------------------------


def test_large_pixel_data_is_not_read(tmp_path: Path) -> None:
    """A 50 MB Pixel Data validates with a peak allocation far below its size."""
    ds = _dataset()
    _pixels(ds, PIXEL_BYTES)
    path = _write(tmp_path / "big.dcm", ds)
    del ds
    outcome, peak = _peak_bytes(path)
    assert isinstance(outcome, InstanceRef)
    assert peak < 1024 * 1024


def test_deflated_large_pixel_data_is_not_inflated(tmp_path: Path) -> None:
    """50 MB of deflated zero Pixel Data (a zip bomb) is not inflated into memory."""
    ds = _dataset()
    _pixels(ds, PIXEL_BYTES)
    path = _write(tmp_path / "bomb.dcm", ds, transfer_syntax=DeflatedExplicitVRLittleEndian)
    del ds
    assert path.stat().st_size < PIXEL_BYTES // 100
    outcome, peak = _peak_bytes(path)
    assert isinstance(outcome, InstanceRef)
    assert peak < 1024 * 1024


def test_large_element_before_uids_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private element bigger than the read cap, before the UIDs, is skipped as it streams."""
    monkeypatch.setattr(dicomheader, "MAX_HEADER_READ_BYTES", 64 * 1024)
    ds = _dataset()
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091010, "OB", bytes(1024 * 1024))
    assert _validate(_write(tmp_path / "private.dcm", ds)) == InstanceRef(
        CT_IMAGE_STORAGE, SOP_INSTANCE, STUDY, SERIES
    )


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_header_over_read_cap_cannot_be_understood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfer_syntax: str
) -> None:
    """An undefined-length sequence before the UIDs bigger than the cap is 0xC000."""
    monkeypatch.setattr(dicomheader, "MAX_HEADER_READ_BYTES", 64 * 1024)
    item = Dataset()
    item.add_new(0x00090010, "LO", "ACME")
    item.add_new(0x00091010, "OB", random.Random(0).randbytes(256 * 1024))
    ds = _dataset()
    ds.add(DataElement(0x00081140, "SQ", Sequence([item]), is_undefined_length=True))
    path = _write(tmp_path / "seq.dcm", ds, transfer_syntax=transfer_syntax)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert "more than 65536 bytes" in failed.detail


# --- malformed and truncated files -------------------------------------------


def test_broken_file_meta_cannot_be_understood(tmp_path: Path) -> None:
    """A File Meta group pydicom cannot parse is 0xC000 without UIDs."""
    meta = struct.pack("<HH2sHI", 0x0002, 0x0001, b"SQ", 0, 0xFFFFFFFF) + b"\xfe\xff"
    path = tmp_path / "meta.dcm"
    path.write_bytes(bytes(128) + b"DICM" + meta)
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.CANNOT_UNDERSTAND
    assert failed.detail.startswith("unreadable DICOM data: ")


def test_truncated_deflated_file_still_validates(tmp_path: Path) -> None:
    """A deflated file cut after its UIDs passes: completeness is the parser's job."""
    source = TEST_FILES / "image_dfl.dcm"
    path = tmp_path / "cut.dcm"
    path.write_bytes(source.read_bytes()[:-100])
    assert _validate(path) == _uids(source)


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    ],
)
def test_jpip_deflate_data_set_is_inflated(tmp_path: Path, transfer_syntax: str) -> None:
    """PS3.5 §A.7/§A.12: a JPIP Deflate data set is a raw deflate stream, read inflated."""
    body = (
        _ui(0x00080016, CTImageStorage)
        + _ui(0x00080018, SOP_INSTANCE)
        + _ui(0x0020000D, STUDY)
        + _ui(0x0020000E, SERIES)
    )
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    path = _meta_only(
        tmp_path / "jpip.dcm", transfer_syntax, deflater.compress(body) + deflater.flush()
    )
    assert _validate(path) == InstanceRef(CT_IMAGE_STORAGE, SOP_INSTANCE, STUDY, SERIES)


def test_capture_header_gives_raw_uids() -> None:
    """capture_header returns the File Meta and data set UIDs as text, padding stripped."""
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    assert dicomheader.capture_header(CT.read_bytes()) == dicomheader.DicomHeader(
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        media_storage_sop_class=str(ds.file_meta.MediaStorageSOPClassUID),
        media_storage_sop_instance=str(ds.file_meta.MediaStorageSOPInstanceUID),
        sop_class=str(ds.SOPClassUID),
        sop_instance=str(ds.SOPInstanceUID),
        study=str(ds.StudyInstanceUID),
        series=str(ds.SeriesInstanceUID),
    )


def test_invalid_transfer_syntax_uid_is_quoted(tmp_path: Path) -> None:
    """A Transfer Syntax UID that is not a UID is 0xC122 with the value quoted."""
    path = _write(tmp_path / "ts.dcm", _dataset())
    _replace_first(path, ExplicitVRLittleEndian, "1.2.840.10008.1.2..1")
    failed = _failed(_validate(path))
    assert failed.reason == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    assert failed.detail == "transfer syntax '1.2.840.10008.1.2..1' is not supported"


def test_long_invalid_value_is_cut_in_detail(tmp_path: Path) -> None:
    """A 1000-character invalid UID is shortened in the detail."""
    ds = _dataset()
    _set_raw(ds, 0x0020000D, "9" * 1000)
    failed = _failed(_validate(_write(tmp_path / "long.dcm", ds)))
    assert failed.reason == FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert failed.detail.endswith("...'")
    assert len(failed.detail) < 200
