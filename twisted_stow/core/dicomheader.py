"""Read the few UIDs validation needs from the start of a PS3.10 file, within a budget.

``read_header(path)`` is blocking (file I/O and pydicom); run it in a worker
thread.  It reads only the start of the file: the 128-byte preamble and "DICM"
prefix, the File Meta Information, and the data set up to Series Instance UID
(0020,000E).  Pixel Data and everything after that element are never read,
and the bytes it does read are capped (``MAX_HEADER_READ_BYTES``, counted after
inflation for a deflated data set), so a hostile part cannot make it allocate
much.  It judges nothing: whether the UIDs are present, valid, consistent and
allowed is ``validation``'s job; here a file is either readable (a
``DicomHeader``) or not (a CANNOT_UNDERSTAND ``Failed``).

It never decides whether a file is complete either: pydicom reads a truncated
file without complaint, so completeness is the multipart parser's job.

Warnings: pydicom may warn about a malformed part (for example "Expected
explicit VR, but found implicit VR").  They are left alone on purpose:
``warnings.catch_warnings`` swaps process-wide state and is not thread-safe,
and changing ``pydicom.config.settings`` from a library module would change
pydicom's behaviour for the whole process.  Reading the UIDs as raw bytes
(never through pydicom's value conversion) already keeps valid parts silent
and keeps pydicom's value validation out of the decision; the application may
set ``pydicom.config.settings.reading_validation_mode`` once at start-up if it
wants malformed parts quieter still.

Pure: the standard library, pydicom and ``outcomes`` only.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from .outcomes import Failed, FailureReason

# Cap on the bytes actually read (elements skipped by seeking do not count)
# while looking for the UIDs: the File Meta Information plus groups
# 0008-0020, inflated when deflated.  No file bundled with pydicom 3.0 needs
# more than 1,632 bytes (measured); 8 MiB leaves room for long sequences in
# those groups (a Referenced Image Sequence of tens of thousands of items)
# while bounding what a hostile part can make a worker thread allocate.
MAX_HEADER_READ_BYTES = 8 * 1024 * 1024

# PS3.10 §7.1: a 128-byte preamble, then the prefix "DICM", then the File Meta
# Information (group 0002, always Explicit VR Little Endian).
_PREAMBLE_BYTES = 128
_PREFIX = b"DICM"

_INFLATE_CHUNK_BYTES = 64 * 1024

_MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
_TRANSFER_SYNTAX_UID = 0x00020010
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_STUDY_INSTANCE_UID = 0x0020000D
_SERIES_INSTANCE_UID = 0x0020000E

_META_TAGS: list[BaseTag | int] = [
    _MEDIA_STORAGE_SOP_CLASS_UID,
    _MEDIA_STORAGE_SOP_INSTANCE_UID,
    _TRANSFER_SYNTAX_UID,
]
_DATA_SET_TAGS: list[BaseTag | int] = [
    _SOP_CLASS_UID,
    _SOP_INSTANCE_UID,
    _STUDY_INSTANCE_UID,
    _SERIES_INSTANCE_UID,
]

# Transfer syntaxes whose data set is not Explicit VR Little Endian.  Any other
# one, known or not, is read as Explicit VR Little Endian: that is what every
# encapsulated syntax uses for the data set (PS3.5 §10), and an unknown one is
# judged by validation's allow-list, not here.
_IMPLICIT_VR_LITTLE_ENDIAN = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.20",  # Papyrus 3 Implicit VR Little Endian (retired)
    }
)
_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired
# PS3.5 §A.5, §A.7 and §A.12: everything after the File Meta is one raw
# deflate stream of an Explicit VR Little Endian data set.
_DEFLATED = frozenset(
    {
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    }
)


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """The UI values of one PS3.10 file that validation judges.

    Each is the element's raw value as text, trailing NUL/space padding
    stripped and nothing else checked: ``None`` when the element is absent,
    ``""`` when it is empty, and ``"<Sequence>"`` (the value's type name in
    angle brackets) when a file declares it as something other than text.
    """

    transfer_syntax: str
    """Transfer Syntax UID (0002,0010); never empty (without it the file is unreadable)."""
    media_storage_sop_class: str | None
    """Media Storage SOP Class UID (0002,0002)."""
    media_storage_sop_instance: str | None
    """Media Storage SOP Instance UID (0002,0003)."""
    sop_class: str | None
    """SOP Class UID (0008,0016)."""
    sop_instance: str | None
    """SOP Instance UID (0008,0018)."""
    study: str | None
    """Study Instance UID (0020,000D)."""
    series: str | None
    """Series Instance UID (0020,000E)."""


def read_header(path: str | os.PathLike[str]) -> DicomHeader | Failed:
    """Read the File Meta and data set UIDs of the PS3.10 file at ``path``.

    Blocking: run it in a worker thread.  Returns a CANNOT_UNDERSTAND (0xC000)
    ``Failed``, without UIDs, when the file is empty, has no 128-byte preamble
    followed by "DICM", has a File Meta or data set pydicom cannot parse, has
    no Transfer Syntax UID (0002,0010), has a corrupt deflate stream, or needs
    more than ``MAX_HEADER_READ_BYTES`` read before (0020,000E).

    Raises ``OSError`` when the file itself cannot be opened or read: that is
    a storage fault, not something the client sent.
    """
    with open(path, "rb") as raw:
        start = raw.read(_PREAMBLE_BYTES + len(_PREFIX))
        if not start:
            return _cannot_understand("empty part")
        if len(start) < _PREAMBLE_BYTES + len(_PREFIX) or start[_PREAMBLE_BYTES:] != _PREFIX:
            return _cannot_understand(
                "not a DICOM PS3.10 file: no 128-byte preamble followed by 'DICM'"
            )

        reader = _BudgetedReader(raw, MAX_HEADER_READ_BYTES)
        meta = _read_pydicom(reader, is_implicit_vr=False, is_little_endian=True, meta=True)
        if isinstance(meta, Failed):
            return meta
        transfer_syntax = _text(meta, _TRANSFER_SYNTAX_UID)
        if not transfer_syntax:
            return _cannot_understand(
                "File Meta Information has no Transfer Syntax UID (0002,0010)"
            )

        source: _BudgetedReader | _InflatingReader = reader
        if transfer_syntax in _DEFLATED:
            # pydicom would inflate all of it into memory at once (a zip bomb
            # needs only kilobytes); inflate on demand, within budget.
            source = _InflatingReader(raw, MAX_HEADER_READ_BYTES)

        data_set = _read_pydicom(
            source,
            is_implicit_vr=transfer_syntax in _IMPLICIT_VR_LITTLE_ENDIAN,
            is_little_endian=transfer_syntax != _EXPLICIT_VR_BIG_ENDIAN,
            meta=False,
        )
        if isinstance(data_set, Failed):
            return data_set

    return DicomHeader(
        transfer_syntax=transfer_syntax,
        media_storage_sop_class=_text(meta, _MEDIA_STORAGE_SOP_CLASS_UID),
        media_storage_sop_instance=_text(meta, _MEDIA_STORAGE_SOP_INSTANCE_UID),
        sop_class=_text(data_set, _SOP_CLASS_UID),
        sop_instance=_text(data_set, _SOP_INSTANCE_UID),
        study=_text(data_set, _STUDY_INSTANCE_UID),
        series=_text(data_set, _SERIES_INSTANCE_UID),
    )


class _HeaderTooLarge(Exception):
    """Reading the header would take more than ``MAX_HEADER_READ_BYTES``."""


class _StagedFileUnreadable(Exception):
    """Reading the staged file itself failed; the cause is the disk's ``OSError``.

    Kept apart from pydicom's exceptions because pydicom raises ``OSError``
    for malformed input too ("No tag to read at file position ...").
    """


class _BudgetedReader:
    """A read-through file wrapper that refuses to read more than a budget.

    Seeking is free: pydicom skips the elements it was not asked for by
    seeking, so only what it really loads counts.  The position is tracked
    here because pydicom asks for it twice per element and a buffered file
    answers with a system call (measured: a third of the time on CT_small).
    """

    def __init__(self, fp: BinaryIO, budget_bytes: int) -> None:
        self._fp = fp
        self._left = budget_bytes
        self._position = fp.tell()
        self.name = getattr(fp, "name", "<part>")

    def read(self, size: int | None = -1) -> bytes:
        """Read like ``fp.read``, raising ``_HeaderTooLarge`` once over budget."""
        wanted = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        try:
            data = self._fp.read(wanted)
        except OSError as exc:
            raise _StagedFileUnreadable from exc
        self._position += len(data)
        self._left -= len(data)
        if self._left < 0:
            raise _HeaderTooLarge
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek the underlying file; a negative position is malformed input."""
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only SEEK_SET and SEEK_CUR are needed")
        if offset < 0:
            # A real file would raise OSError (EINVAL), which means a disk fault.
            raise ValueError(f"negative seek position {offset}")
        try:
            self._position = self._fp.seek(offset)
        except OSError as exc:
            raise _StagedFileUnreadable from exc
        return self._position

    def tell(self) -> int:
        """The position in the underlying file."""
        return self._position


class _InflatingReader:
    """A seekable view of a raw deflate stream, inflated on demand up to a budget.

    The inflated bytes are kept (pydicom seeks back a few bytes at times), so
    the budget counts positions, not reads: a part that needs anything beyond
    ``budget_bytes`` of its inflated data set raises ``_HeaderTooLarge``.
    """

    def __init__(self, fp: BinaryIO, budget_bytes: int) -> None:
        self._fp = fp
        self._budget = budget_bytes
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._inflated = bytearray()
        self._position = 0
        self.name = getattr(fp, "name", "<part>")

    def read(self, size: int | None = -1) -> bytes:
        """Read like ``fp.read`` from the inflated stream."""
        end = self._budget + 1 if size is None or size < 0 else self._position + size
        self._inflate_to(end)
        data = bytes(self._inflated[self._position : end])
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within the inflated stream (inflating happens on the next read)."""
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("seek from the end of a deflate stream")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._position = offset
        return offset

    def tell(self) -> int:
        """The position in the inflated stream."""
        return self._position

    def _read_compressed(self) -> bytes:
        """The next chunk of the compressed stream."""
        try:
            return self._fp.read(_INFLATE_CHUNK_BYTES)
        except OSError as exc:
            raise _StagedFileUnreadable from exc

    def _inflate_to(self, end: int) -> None:
        """Inflate until ``end`` bytes are available or the stream ends."""
        target = min(end, self._budget)
        while len(self._inflated) < target and not self._inflater.eof:
            chunk = self._inflater.unconsumed_tail or self._read_compressed()
            if not chunk:
                return  # a truncated stream: pydicom reads what there is
            # max_length bounds the output whatever the compression ratio.
            self._inflated += self._inflater.decompress(chunk, target - len(self._inflated))
        if end > self._budget and len(self._inflated) >= self._budget and not self._inflater.eof:
            raise _HeaderTooLarge


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    """Stop condition: the File Meta Information is group 0002 only."""
    return tag >> 16 != 0x0002


def _past_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    """Stop condition: nothing after (0020,000E) is needed.

    PS3.5 §7.1 orders data elements by increasing tag, so this stops before
    the functional groups, overlays and Pixel Data without reading them.
    """
    return int(tag) > _SERIES_INSTANCE_UID


def _read_pydicom(
    source: _BudgetedReader | _InflatingReader,
    *,
    is_implicit_vr: bool,
    is_little_endian: bool,
    meta: bool,
) -> Dataset | Failed:
    """Read the File Meta group or the data set up to (0020,000E) with pydicom.

    Only the wanted tags are kept; pydicom seeks past every other element of
    defined length instead of loading it (measured: a 50 MB private element
    before the UIDs costs 10 kB, not 50 MB).
    """
    try:
        return read_dataset(
            cast(BinaryIO, source),
            is_implicit_vr,
            is_little_endian,
            stop_when=_not_file_meta if meta else _past_series_uid,
            specific_tags=_META_TAGS if meta else _DATA_SET_TAGS,
        )
    except _HeaderTooLarge:
        return _cannot_understand(
            f"more than {MAX_HEADER_READ_BYTES} bytes to read before"
            " Series Instance UID (0020,000E)"
        )
    except _StagedFileUnreadable as exc:
        # A storage fault, not the client's: the disk's own OSError goes up.
        raise cast(OSError, exc.__cause__) from None
    except zlib.error as exc:
        return _cannot_understand(f"deflated data set is corrupt: {exc}")
    # pydicom raises many types on malformed input (ValueError, struct.error,
    # EOFError, KeyError, NotImplementedError, InvalidDicomError...), and any
    # of them means the same to the client: the part cannot be understood.
    except Exception as exc:
        return _cannot_understand(f"unreadable DICOM data: {exc or type(exc).__name__}")


def _text(data_set: Dataset, tag: int) -> str | None:
    """The raw value of a UI element as text without padding; ``None`` if absent.

    The bytes are decoded here rather than by pydicom so that pydicom's value
    validation neither warns about nor raises on a malformed UID: judging it is
    validation's job.  UI uses the default repertoire (PS3.5 §6.2), so Latin-1
    cannot fail and non-ASCII bytes simply make an invalid UID.
    """
    element = data_set.get_item(tag, keep_deferred=True)
    if element is None:
        return None
    value = element.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif not isinstance(value, str):
        # Only a file that declares a UID element as a sequence gets here.
        return f"<{type(value).__name__}>"
    # PS3.5 §6.2: UI is padded to even length with one trailing NUL; some
    # writers pad with a space instead, which is tolerated.
    return value.rstrip("\x00 ")


def _cannot_understand(detail: str) -> Failed:
    """A CANNOT_UNDERSTAND (0xC000) failure, reported without UIDs."""
    return Failed(FailureReason.CANNOT_UNDERSTAND, detail)
