"""Checks that a staged part is a storable DICOM instance, and names it.

``validate_part`` is blocking (file I/O and pydicom), so the ingest edge runs it
in a worker thread.  It reads only the start of the file: the 128-byte
preamble and "DICM" prefix, the File Meta Information, and the data set up to
Series Instance UID (0020,000E).  Pixel Data and everything after that group
are never read, and the bytes it does read are capped
(``MAX_HEADER_READ_BYTES``), so a hostile part cannot make it allocate much.

It never decides whether a part is complete: pydicom reads a truncated file
without complaint, so completeness is the multipart parser's job (a part is
only validated after its closing delimiter arrived).

Warnings: pydicom may warn about a malformed part (for example "Expected
explicit VR, but found implicit VR").  They are left alone on purpose:
``warnings.catch_warnings`` swaps process-wide state and is not thread-safe,
and changing ``pydicom.config.settings`` from a library module would change
pydicom's behaviour for the whole process.  Reading the UIDs as raw bytes (never
through pydicom's value conversion) already keeps valid parts silent and keeps
pydicom's value validation out of the decision; the application may set
``pydicom.config.settings.reading_validation_mode`` once at start-up if it
wants malformed parts quieter still.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import BinaryIO, cast

# pydicom has no public listing of the UIDs it knows; this generated module
# (PS3.6 Table A-1) has kept its name and shape since pydicom 1.x, and the
# tests pin what the defaults must and must not contain.
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from .outcomes import Failed, FailureReason, InstanceRef
from .uids import is_valid_uid

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

_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
_PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.20"  # retired

# Transfer syntaxes pydicom knows that cannot encode a stored PS3.10 file.
_NOT_FILE_TRANSFER_SYNTAXES = frozenset(
    {
        # PS3.5 §10.8: the JPIP Referenced syntaxes "shall not be used for
        # media storage defined by PS3.10"; the pixel data is only a URL whose
        # persistence is undefined, which an archive cannot keep.
        "1.2.840.10008.1.2.4.94",
        "1.2.840.10008.1.2.4.95",
        "1.2.840.10008.1.2.4.204",
        "1.2.840.10008.1.2.4.205",
        # Retired "RFC 2557 MIME Encapsulation" and "XML Encoding": MIME and
        # XML packagings, not a binary data set encoding that can follow a
        # PS3.10 File Meta Information header.
        "1.2.840.10008.1.2.6.1",
        "1.2.840.10008.1.2.6.2",
    }
)

# PS3.4 Annex B lists the Storage SOP Classes; pydicom's dictionary has no
# "service" column, so they are the SOP Classes named "... Storage ...", minus
# those that carry the word but are not stored through the Storage Service
# Class: Storage Commitment Push/Pull (PS3.4 Annex J), Storage Management
# (not in pydicom 3.0 as a SOP Class, excluded should a later one add it), and
# Media Storage Directory Storage, the DICOMDIR (PS3.3 Annex F), which only
# exists in media file-sets and has no Study or Series to be filed under.
_STORAGE_WORD = re.compile(r"\bStorage\b")
_NOT_STORAGE_NAMES = (
    "Storage Commitment",
    "Storage Management",
    "Media Storage Directory",
)

_DETAIL_VALUE_CHARS = 80


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """What the server accepts: UIDs compared exactly, as in the File Meta."""

    allowed_sop_classes: frozenset[str]
    allowed_transfer_syntaxes: frozenset[str]


def default_sop_classes() -> frozenset[str]:
    """Every Storage SOP Class UID pydicom knows (PS3.4 Annex B), retired ones included.

    Retired classes stay in because archives being migrated still hold them
    (for example the retired Ultrasound Image Storage).
    """
    found: set[str] = set()
    for key in UID_dictionary:
        uid = UID(key)
        name = uid.name
        if (
            uid.type == "SOP Class"
            and _STORAGE_WORD.search(name)
            and not any(word in name for word in _NOT_STORAGE_NAMES)
        ):
            found.add(str(uid))
    return frozenset(found)


def default_transfer_syntaxes() -> frozenset[str]:
    """Every transfer syntax UID pydicom knows that a stored PS3.10 file can use.

    That is pydicom's whole list minus the JPIP Referenced syntaxes and the two
    retired MIME/XML ones (see ``_NOT_FILE_TRANSFER_SYNTAXES``).  Implicit VR
    Little Endian and Explicit VR Big Endian are in; a deployment that wants to
    refuse them (SPEC.md checklist item 13) passes its own policy.
    """
    return frozenset(
        str(uid)
        for uid in map(UID, UID_dictionary)
        if uid.type == "Transfer Syntax" and uid not in _NOT_FILE_TRANSFER_SYNTAXES
    )


DEFAULT_POLICY = ValidationPolicy(
    allowed_sop_classes=default_sop_classes(),
    allowed_transfer_syntaxes=default_transfer_syntaxes(),
)


def validate_part(
    path: str | os.PathLike[str], policy: ValidationPolicy = DEFAULT_POLICY
) -> InstanceRef | Failed:
    """Check the complete staged part at ``path``; return its UIDs or why it fails.

    Blocking: run it in a worker thread.  It does not check that the part is
    complete (pydicom reads a truncated file without complaint; the multipart
    parser decides completeness).  The first rule that matches wins:

    - not a PS3.10 file (empty, no preamble + "DICM", unreadable File Meta or
      data set) or no Transfer Syntax UID (0002,0010): CANNOT_UNDERSTAND
      (0xC000), without UIDs;
    - SOP Class, SOP Instance, Study or Series Instance UID missing, empty or
      not a valid UID (PS3.5 §9.1), or SOP Class/Instance UID differing from
      the Media Storage SOP Class/Instance UID (0002,0002)/(0002,0003) when
      those are present: DATA_SET_DOES_NOT_MATCH_SOP_CLASS (0xA900), carrying
      whichever of the SOP Class/Instance UIDs are valid;
    - transfer syntax not in ``policy``: TRANSFER_SYNTAX_NOT_SUPPORTED (0xC122);
    - SOP Class not in ``policy``: SOP_CLASS_NOT_SUPPORTED (0x0122);
    - otherwise the ``InstanceRef``.

    The File Meta transfer syntax is the one judged, whatever the part's
    ``transfer-syntax`` media type parameter says (PS3.18 §8.7.9).

    Raises ``OSError`` when the staged file itself cannot be read: that is a
    storage fault, not something the client sent.
    """
    header = _read_header(path)
    if isinstance(header, Failed):
        return header
    return _judge(header, policy)


@dataclass(frozen=True, slots=True)
class _Header:
    """The UI values validation needs, as text; ``None`` when absent."""

    transfer_syntax: str
    media_storage_sop_class: str | None
    media_storage_sop_instance: str | None
    sop_class: str | None
    sop_instance: str | None
    study: str | None
    series: str | None


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


def _read_header(path: str | os.PathLike[str]) -> _Header | Failed:
    """Read the preamble, File Meta and UIDs of the file at ``path``."""
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
        if transfer_syntax == _DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            # PS3.5 §A.5: everything after the File Meta is one raw deflate
            # stream.  pydicom would inflate all of it into memory at once (a
            # zip bomb needs only kilobytes); inflate on demand, within budget.
            source = _InflatingReader(raw, MAX_HEADER_READ_BYTES)

        data_set = _read_pydicom(
            source,
            is_implicit_vr=transfer_syntax
            in (_IMPLICIT_VR_LITTLE_ENDIAN, _PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN),
            is_little_endian=transfer_syntax != _EXPLICIT_VR_BIG_ENDIAN,
            meta=False,
        )
        if isinstance(data_set, Failed):
            return data_set

    return _Header(
        transfer_syntax=transfer_syntax,
        media_storage_sop_class=_text(meta, _MEDIA_STORAGE_SOP_CLASS_UID),
        media_storage_sop_instance=_text(meta, _MEDIA_STORAGE_SOP_INSTANCE_UID),
        sop_class=_text(data_set, _SOP_CLASS_UID),
        sop_instance=_text(data_set, _SOP_INSTANCE_UID),
        study=_text(data_set, _STUDY_INSTANCE_UID),
        series=_text(data_set, _SERIES_INSTANCE_UID),
    )


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
    this module's job.  UI uses the default repertoire (PS3.5 §6.2), so Latin-1
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


def _judge(header: _Header, policy: ValidationPolicy) -> InstanceRef | Failed:
    """Apply the UID, consistency and policy rules to a readable header."""
    named = (
        ("SOP Class UID (0008,0016)", header.sop_class),
        ("SOP Instance UID (0008,0018)", header.sop_instance),
        ("Study Instance UID (0020,000D)", header.study),
        ("Series Instance UID (0020,000E)", header.series),
    )
    problems = [
        f"{name} is missing" if not value else f"{name} is not a valid UID: {_shorten(value)}"
        for name, value in named
        if not value or not is_valid_uid(value)
    ]
    sop_class = header.sop_class if header.sop_class and is_valid_uid(header.sop_class) else None
    sop_instance = (
        header.sop_instance if header.sop_instance and is_valid_uid(header.sop_instance) else None
    )
    study, series = header.study, header.series
    # problems is empty exactly when all four are valid; the other tests only
    # tell the type checker so.
    if problems or sop_class is None or sop_instance is None or not study or not series:
        return Failed(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "; ".join(problems),
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )

    # PS3.10 §7.1: the Media Storage UIDs repeat the data set's own; a part
    # whose two disagree cannot be trusted to be the instance it claims.
    mismatch = None
    if header.media_storage_sop_class and header.media_storage_sop_class != sop_class:
        mismatch = (
            f"SOP Class UID (0008,0016) {sop_class} differs from Media Storage SOP Class"
            f" UID (0002,0002) {_shorten(header.media_storage_sop_class)}"
        )
    elif header.media_storage_sop_instance and header.media_storage_sop_instance != sop_instance:
        mismatch = (
            f"SOP Instance UID (0008,0018) {sop_instance} differs from Media Storage SOP"
            f" Instance UID (0002,0003) {_shorten(header.media_storage_sop_instance)}"
        )
    if mismatch is not None:
        return Failed(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            mismatch,
            sop_class,
            sop_instance,
        )

    if header.transfer_syntax not in policy.allowed_transfer_syntaxes:
        return Failed(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {_describe_uid(header.transfer_syntax)} is not supported",
            sop_class,
            sop_instance,
        )
    if sop_class not in policy.allowed_sop_classes:
        return Failed(
            FailureReason.SOP_CLASS_NOT_SUPPORTED,
            f"SOP Class {_describe_uid(sop_class)} is not supported",
            sop_class,
            sop_instance,
        )
    return InstanceRef(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
    )


def _cannot_understand(detail: str) -> Failed:
    """A CANNOT_UNDERSTAND (0xC000) failure, reported without UIDs."""
    return Failed(FailureReason.CANNOT_UNDERSTAND, detail)


def _describe_uid(value: str) -> str:
    """``value`` with pydicom's name for it, when it has one."""
    if not is_valid_uid(value):
        return _shorten(value)
    name = UID(value).name
    return value if name == value else f"{value} ({name})"


def _shorten(value: str) -> str:
    """``value`` quoted and cut short enough for a one-line detail."""
    if len(value) > _DETAIL_VALUE_CHARS:
        value = value[:_DETAIL_VALUE_CHARS] + "..."
    return repr(value)
