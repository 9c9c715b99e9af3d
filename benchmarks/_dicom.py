"""Valid PS3.10 DICOM parts of any size whose pixel bytes are streamed, not held.

A part is a Secondary Capture Image (8-bit MONOCHROME2, Explicit VR Little
Endian) in three pieces:

1. ``header``: preamble, "DICM", File Meta and the data set up to Pixel Data,
   written by pydicom with fresh UIDs, followed by the Pixel Data element
   header (7FE0,0010) OB declaring ``Rows x Columns`` bytes;
2. the pixel bytes themselves, ``tests.helpers.synthetic_payload`` (streamed
   in 1 MiB blocks, never materialised);
3. ``trailer``: a Data Set Trailing Padding element (FFFC,FFFC) that makes
   the file exactly the size asked for (``Rows x Columns`` rarely is).

``plan_request`` splits a total body size into such parts so that the
multipart/related body framing them is exactly that size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.helpers import build_multipart, synthetic_payload

# Element headers of Explicit VR Little Endian with a 4-byte length: tag, VR,
# two reserved bytes, length.
_PIXEL_DATA_TAG = struct.pack("<HH", 0x7FE0, 0x0010)
_TRAILING_PADDING_TAG = struct.pack("<HH", 0xFFFC, 0xFFFC)
_ELEMENT_HEADER_BYTES = 12
_MAX_US = 0xFFFF  # Rows and Columns are US
_MIN_COLUMNS = 512
# The Pixel Data length is 32 bits and 0xFFFFFFFF means "undefined".
MAX_PART_BYTES = 0xFFFF0000


@dataclass(frozen=True, slots=True)
class Part:
    """One DICOM file: ``header`` + ``pixel_bytes`` streamed bytes + ``trailer``."""

    sop_instance_uid: str
    header: bytes
    pixel_bytes: int
    trailer: bytes
    rows: int
    columns: int

    @property
    def size(self) -> int:
        return len(self.header) + self.pixel_bytes + len(self.trailer)

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, in pieces of at most 1 MiB."""
        yield self.header
        yield from synthetic_payload(self.pixel_bytes)
        yield self.trailer


def _element_header(tag: bytes, length: int) -> bytes:
    return tag + b"OB\x00\x00" + struct.pack("<I", length)


def _dataset(study: str, series: str, sop: str, rows: int, columns: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20240101"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.PatientName = "Benchmark^PeakRSS"
    ds.PatientID = "STOW-BENCH"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _frame_shape(pixel_budget: int) -> tuple[int, int]:
    """(rows, columns), columns even, with rows x columns ≤ budget and the
    slack either 0 or big enough for a padding element."""
    columns = max(_MIN_COLUMNS, -(-pixel_budget // _MAX_US))
    columns += columns % 2
    rows = min(_MAX_US, pixel_budget // columns)
    slack = pixel_budget - rows * columns
    if 0 < slack < _ELEMENT_HEADER_BYTES:
        rows -= 1
    if rows < 1:
        raise ValueError(f"a part of {pixel_budget} pixel bytes is too small")
    return rows, columns


def make_part(size: int, study: str, series: str) -> Part:
    """A DICOM file of exactly ``size`` bytes (even) in ``study``/``series``."""
    if size % 2 or size > MAX_PART_BYTES:
        raise ValueError(f"part size {size} must be even and at most {MAX_PART_BYTES}")
    sop = generate_uid()
    # Rows/Columns are fixed-length US values: the header length does not
    # depend on them, so measure it once with placeholders.
    header_bytes = len(_encode(_dataset(study, series, sop, 1, 2))) + _ELEMENT_HEADER_BYTES
    rows, columns = _frame_shape(size - header_bytes)
    pixels = rows * columns
    header = _encode(_dataset(study, series, sop, rows, columns))
    header += _element_header(_PIXEL_DATA_TAG, pixels)
    slack = size - len(header) - pixels
    trailer = (
        _element_header(_TRAILING_PADDING_TAG, slack - _ELEMENT_HEADER_BYTES)
        + bytes(slack - _ELEMENT_HEADER_BYTES)
        if slack
        else b""
    )
    part = Part(sop, header, pixels, trailer, rows, columns)
    assert part.size == size, (part.size, size)
    return part


def framing_bytes(part_count: int) -> int:
    """Bytes of a multipart body (``tests.helpers`` framing) besides its payloads."""
    return len(build_multipart([b""] * part_count))


def plan_request(total_bytes: int, part_count: int) -> list[Part]:
    """``part_count`` parts of one new study and series whose multipart body
    is ``total_bytes`` long (rounded down to even file sizes)."""
    # DICOM files have even lengths: share the payload out in 2-byte units.
    units = (total_bytes - framing_bytes(part_count)) // 2
    base, extra = divmod(units, part_count)
    study, series = generate_uid(), generate_uid()
    return [
        make_part(2 * (base + (1 if i < extra else 0)), study, series) for i in range(part_count)
    ]


def write_part(path: str, size: int, study: str, series: str) -> Part:
    """Write a DICOM file of exactly ``size`` bytes to ``path``; return its Part."""
    part = make_part(size, study, series)
    with open(path, "wb") as out:
        for chunk in part.chunks():
            out.write(chunk)
    return part
