"""Instances made for robustness tests: fresh UIDs, hostile UIDs, any size."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from tests.dicom_files import CT


def instance(path: Path = CT, *, padding: int = 0, **attributes: Any) -> bytes:
    """``path``'s instance with a fresh SOP Instance UID (and File Meta to match).

    ``attributes`` override data set elements by keyword (written as given,
    hostile values included); ``padding`` adds that many bytes in a private
    OB element to make a large instance.
    """
    ds = pydicom.dcmread(path)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    if padding:
        block = ds.private_block(0x0009, "twisted-stow robustness", create=True)
        block.add_new(0x10, "OB", bytes(padding))
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sop_instance_uid(data: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def stored_location(root: Path, data: bytes) -> Path:
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
