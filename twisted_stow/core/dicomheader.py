"""Capture the few UIDs validation needs from a PS3.10 part as it streams.

``HeaderCapture`` is fed every ``PartData`` of one part, in order.  It walks
the 128-byte preamble and "DICM" prefix, the File Meta Information (group
0002, always Explicit VR Little Endian) and the data set element by element,
up to the first top-level element past Series Instance UID (0020,000E).
Then it is ``done``: the UIDs, and with them the instance's final name, are
known while the rest of the part is still arriving, and further ``feed``
calls cost nothing.  It reads no files and keeps no part: it is pure.

What it holds is bounded, whatever the part:

- values it does not need are skipped as they stream, never buffered; it
  keeps only an undecided element header (at most 12 bytes) and the seven
  values of ``DicomHeader`` (each capped at ``MAX_CAPTURED_VALUE_BYTES``);
- the bytes it must look at are capped (``MAX_HEADER_READ_BYTES``): the
  values of top-level elements of defined length are skipped for free (as
  seeking past them in a file was), everything else counts, and for a
  deflated data set every inflated byte counts (inflating them is the cost);
- the elements, items and delimiters it walks are capped
  (``MAX_HEADER_ELEMENTS``), and so is the nesting of sequences
  (``MAX_HEADER_DEPTH``): a few kilobytes of deflated empty items (issue 17
  point 1: ~950,000 of them in 12 KB) are refused after 65,536 steps, not
  walked to the end.

It judges nothing: whether the UIDs are present, valid, consistent and
allowed is ``validation``'s job; here a part is either readable (a
``DicomHeader``) or not (a CANNOT_UNDERSTAND ``Failed``).  It never decides
whether a part is complete either: a part cut after its UIDs reads like a
whole one, and completeness is the multipart parser's job.

The walk follows pydicom's reader (``pydicom.filereader``, 3.0) where a part
is malformed: an unknown explicit VR outside A-Z is read as implicit, the
first element of each data set decides whether it really is explicit or
implicit VR, an undefined-length element of unknown VR is a sequence, and an
item delimiter (FFFE,E00D) at the top level ends the data set.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass

from .outcomes import Failed, FailureReason

# Cap on the bytes the capture looks at before (0020,000E): the File Meta
# Information plus groups 0008-0020, everything inflated when deflated.  No
# file bundled with pydicom 3.0 needs more than 1,632 bytes (measured); 8 MiB
# leaves room for long sequences in those groups (a Referenced Image Sequence
# of tens of thousands of items) while bounding the work of a hostile part.
MAX_HEADER_READ_BYTES = 8 * 1024 * 1024
# Cap on the element headers, item tags and delimiters walked before
# (0020,000E).  A real header has a few hundred; 65,536 walk in ~50 ms and
# leave room for a Referenced Image Sequence of ~20,000 items, while a
# sequence of ~950,000 empty items (issue 17 point 1) is refused early.
MAX_HEADER_ELEMENTS = 65_536
# Cap on sequences nested in sequences before (0020,000E).  Real headers nest
# a few levels (a code sequence inside a referenced sequence); 64 keeps the
# walk's own recursion far from Python's limit.
MAX_HEADER_DEPTH = 64
# Cap on the bytes kept of one captured value.  A UID has at most 64
# characters (PS3.5 §9.1); a longer value is invalid whatever follows, so it
# is kept cut, marked with "...", and reported as not a UID.
MAX_CAPTURED_VALUE_BYTES = 1024

# Compressed bytes handed to the inflater at a time, and inflated bytes asked
# of it at a time: ``max_length`` bounds the output whatever the ratio, and a
# small input slice keeps the copy zlib makes of its unconsumed tail small.
_INFLATE_INPUT_BYTES = 16 * 1024
_INFLATE_OUTPUT_BYTES = 64 * 1024
# What the capture copies and holds at most (``buffered_bytes``): an
# undecided read (the 132-byte preamble, or a kept value), one inflated
# slice, and the inflater's unconsumed input.  Bytes fed and not walked yet
# are views of the caller's chunks, not copies, and do not count.
MAX_BUFFERED_BYTES = MAX_CAPTURED_VALUE_BYTES + _INFLATE_OUTPUT_BYTES + _INFLATE_INPUT_BYTES
# ``feed``/``run`` without ``max_steps``: walk everything fed.
_UNLIMITED_STEPS = sys.maxsize

# PS3.10 §7.1: a 128-byte preamble, then the prefix "DICM".
_PREAMBLE_BYTES = 128
_PREFIX = b"DICM"

_MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
_TRANSFER_SYNTAX_UID = 0x00020010
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_STUDY_INSTANCE_UID = 0x0020000D
_SERIES_INSTANCE_UID = 0x0020000E
_META_TAGS = frozenset(
    {_MEDIA_STORAGE_SOP_CLASS_UID, _MEDIA_STORAGE_SOP_INSTANCE_UID, _TRANSFER_SYNTAX_UID}
)
_DATA_SET_TAGS = frozenset(
    {_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID}
)

# PS3.5 §7.5: items and delimiters are a tag and a 32-bit length, in every
# transfer syntax.
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
# PS3.5 §7.1.2: these VRs have two reserved bytes and a 32-bit length
# (pydicom's ``EXPLICIT_VR_LENGTH_32``, spelled out so that importing this
# module does not import pydicom: ``stow-upload`` reads headers with it and
# starts ~0.3 s sooner; a unit test keeps the two equal).
_VR_LENGTH_32 = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

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

# What the walk asks of the bytes: exactly n of them (handed back), n skipped
# and counted against the budget, n skipped for free, or the switch from the
# File Meta to the data set (possibly deflated) with the bytes read too far.
_READ = 0
_SKIP = 1
_SKIP_FREE = 2
_SWITCH = 3
_Walk = Generator[tuple[int, int], "bytes | None", None]


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """The UI values of one PS3.10 file that validation judges.

    Each is the element's raw value as text, trailing NUL/space padding
    stripped and nothing else checked: ``None`` when the element is absent,
    ``""`` when it is empty, ``"<Sequence>"`` when a file declares it as a
    sequence (undefined length), and cut with "..." appended past
    ``MAX_CAPTURED_VALUE_BYTES``.
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


class _Refused(Exception):
    """The part cannot be understood; ``args[0]`` says why."""


class HeaderCapture:
    """Walks one part's header as its bytes arrive; see the module docstring.

    ``feed`` each piece of the part in order, then ``result()`` at the end
    of the part, or as soon as ``done``.  Fed with a ``max_steps`` budget it
    walks only that much and keeps the rest (``pending``) for ``run``.
    """

    def __init__(self) -> None:
        # Read at construction so that tests may lower the module's limits.
        self._budget_bytes = MAX_HEADER_READ_BYTES
        self._max_elements = MAX_HEADER_ELEMENTS
        self._verdict: DicomHeader | Failed | None = None
        self._values: dict[int, str] = {}
        self._received = 0
        self._looked_at = 0
        self._elements = 0
        self._offset = 0  # position in the (inflated) stream being walked
        self._pending = bytearray()  # an undecided read, shorter than asked
        self._pushback = b""
        self._deflated = False
        self._inflater: zlib._Decompress | None = None
        self._in_data_set = False
        # Input not walked yet: raw pieces fed (views, not copies) and the
        # rest of one inflated slice.  Empty unless a step budget ran out.
        self._queue: deque[memoryview] = deque()
        # Bytes in ``_queue``, kept as it changes: ``held_bytes`` is read after
        # every chunk fed, and a walk that is behind queues one view per chunk.
        self._queued_bytes = 0
        self._inflated: memoryview | None = None
        self._steps_left = 0
        self._switched = False
        # Where a part that ends early ends: inside a sequence or encapsulated
        # value (unreadable, as pydicom finds it), or in the value being
        # captured (kept cut, so never a valid UID); anywhere else at the top
        # level it simply ends there, as a truncated file reads in pydicom.
        self._nesting = 0
        self._capturing: int | None = None
        self._walk = self._walk_part()
        self._request = next(self._walk)

    @property
    def done(self) -> bool:
        """Whether the result is known (found, or refused); ``feed`` is free after."""
        return self._verdict is not None

    @property
    def pending(self) -> bool:
        """Whether bytes fed are still waiting to be walked (a step budget ran out)."""
        return self._verdict is None and bool(self._queue or self._inflated)

    @property
    def buffered_bytes(self) -> int:
        """Bytes copied and held (at most ``MAX_BUFFERED_BYTES``)."""
        tail = len(self._inflater.unconsumed_tail) if self._inflater is not None else 0
        return len(self._pending) + (len(self._inflated) if self._inflated else 0) + tail

    @property
    def held_bytes(self) -> int:
        """Bytes this capture keeps in memory: its copies and the views fed but not walked.

        The views keep the caller's chunks alive (the part's first bytes wait
        here until the header is understood), so the caller counts them
        against its memory budget, though its writer may hold the same
        chunks: counted twice, never missed.
        """
        return self.buffered_bytes + self._queued_bytes

    def feed(self, data: bytes | memoryview, *, max_steps: int | None = None) -> int:
        """Walk the next bytes of the part; return the steps taken.

        Without ``max_steps`` everything fed is walked now and no reference
        to ``data`` is kept.  With it, at most ``max_steps`` steps are taken
        (a step: one element header, value or item read or skipped, or one
        slice inflated, each O(1) up to ``_INFLATE_OUTPUT_BYTES``); what is
        left is kept, as a view of ``data``, until ``run`` walks it
        (``pending``).  So a caller can spread one part's walk over many
        turns of its event loop.
        """
        if self._verdict is not None or not data:
            return 0
        self._received += len(data)
        self._queue.append(memoryview(data))
        self._queued_bytes += len(data)
        return self.run(max_steps)

    def run(self, max_steps: int | None = None) -> int:
        """Walk what is ``pending``, at most ``max_steps`` steps; return the steps taken."""
        if self._verdict is not None:
            return 0
        budget = _UNLIMITED_STEPS if max_steps is None else max_steps
        self._steps_left = budget
        try:
            self._run()
        except _Refused as refusal:
            self._verdict = _cannot_understand(str(refusal.args[0]))
        except zlib.error as exc:
            self._verdict = _cannot_understand(f"deflated data set is corrupt: {exc}")
        if self._verdict is not None:
            self._queue.clear()
            self._queued_bytes = 0
            self._inflated = None
        return budget - self._steps_left

    def result(self) -> DicomHeader | Failed:
        """The captured header, or why the part cannot be understood.

        Called before ``done``, it takes the part to have ended there; what
        is still ``pending`` is walked first, whatever it costs.
        """
        if self._verdict is None:
            self.run()
        if self._verdict is None:
            self._verdict = self._at_end()
        return self._verdict

    # --- the bytes ----------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while self._verdict is None and self._steps_left > 0:
            if self._inflated is not None:
                rest = self._consume(self._inflated)
                self._inflated = rest if len(rest) else None
                continue
            if not queue:
                kind, wanted = self._request
                if wanted == 0 and kind != _SWITCH:
                    # A request for no bytes (an empty value) is answered now:
                    # left waiting, a part ending here would be judged cut.
                    self._consume(memoryview(b""))
                return
            view = queue.popleft()
            self._queued_bytes -= len(view)
            inflater = self._inflater
            if inflater is not None:
                if inflater.eof:
                    # The deflate stream ended: whatever follows is not data set.
                    queue.clear()
                    self._queued_bytes = 0
                    return
                data = view[:_INFLATE_INPUT_BYTES]
                inflated = inflater.decompress(data, _INFLATE_OUTPUT_BYTES)
                self._steps_left -= 1
                consumed = len(data) - len(inflater.unconsumed_tail)
                if consumed < len(view):
                    queue.appendleft(view[consumed:])
                    self._queued_bytes += len(view) - consumed
                if inflated:
                    self._inflated = memoryview(inflated)
                continue
            rest = self._consume(view)
            if len(rest):
                queue.appendleft(rest)
                self._queued_bytes += len(rest)
            if self._switched:
                # The File Meta ended: the bytes read too far (an element
                # header) belong to the data set, deflated or not.
                self._switched = False
                queue.appendleft(memoryview(self._pushback))
                self._queued_bytes += len(self._pushback)
                self._pushback = b""
                if self._deflated:
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def _consume(self, view: memoryview) -> memoryview:
        """Answer the walk's requests from ``view`` while steps are left; return the rest.

        At the switch from the File Meta to the data set it stops and sets
        ``_switched``: the rest then belongs to the data set.
        """
        kind, wanted = self._request
        while self._verdict is None:
            # The switch needs no bytes and costs no step: taken even when
            # the budget is spent, or nothing would walk the bytes it pushes back.
            if kind != _SWITCH and self._steps_left <= 0:
                return view
            if kind == _READ:
                if self._pending or len(view) < wanted:
                    need = wanted - len(self._pending)
                    self._pending += view[:need]
                    view = view[need:]
                    if len(self._pending) < wanted:
                        return view
                    chunk = bytes(self._pending)
                    self._pending.clear()
                else:
                    chunk = bytes(view[:wanted])
                    view = view[wanted:]
                self._advance(wanted, counted=True)
                answer: bytes | None = chunk
            elif kind == _SWITCH:
                self._request = self._send(None)
                self._switched = True
                return view
            else:
                step = min(wanted, len(view))
                view = view[step:]
                self._advance(step, counted=kind == _SKIP or self._inflater is not None)
                if step < wanted:
                    self._request = (kind, wanted - step)
                    return view
                answer = None
            self._steps_left -= 1
            kind, wanted = self._request = self._send(answer)
        return view

    def _advance(self, nbytes: int, *, counted: bool) -> None:
        self._offset += nbytes
        if counted:
            self._looked_at += nbytes
            if self._looked_at > self._budget_bytes:
                raise _Refused(
                    f"more than {self._budget_bytes} bytes to read before"
                    " Series Instance UID (0020,000E)"
                )

    def _send(self, answer: bytes | None) -> tuple[int, int]:
        try:
            return self._walk.send(answer)
        except StopIteration:
            self._verdict = self._header()
            return (_READ, 0)

    # --- the walk -----------------------------------------------------------

    def _walk_part(self) -> _Walk:
        start = yield (_READ, _PREAMBLE_BYTES + len(_PREFIX))
        assert start is not None
        if start[_PREAMBLE_BYTES:] != _PREFIX:
            raise _Refused(_NOT_PS3_10)
        # File Meta Information: Explicit VR Little Endian, group 0002 only.
        explicit: bool | None = None
        while True:
            raw = yield (_READ, 8)
            assert raw is not None
            if _tag(raw, "<") >> 16 != 0x0002:
                break
            if explicit is None:
                explicit = _sniff_explicit(raw, assumed=True, in_sequence=False)
            tag, vr, length = yield from self._element_header(raw, explicit, "<")
            yield from self._value(tag, vr, length, explicit, "<", _META_TAGS, depth=0)
        transfer_syntax = self._values.get(_TRANSFER_SYNTAX_UID)
        if not transfer_syntax:
            raise _Refused(_NO_TRANSFER_SYNTAX)
        self._in_data_set = True
        self._pushback = raw
        self._deflated = transfer_syntax in _DEFLATED
        yield (_SWITCH, 0)
        order = ">" if transfer_syntax == _EXPLICIT_VR_BIG_ENDIAN else "<"
        explicit = None
        while True:
            raw = yield (_READ, 8)
            assert raw is not None
            tag = _tag(raw, order)
            # PS3.5 §7.1 orders data elements by increasing tag: nothing past
            # (0020,000E) is needed (functional groups, overlays, Pixel Data).
            if tag > _SERIES_INSTANCE_UID:
                return
            if explicit is None:
                explicit = _sniff_explicit(
                    raw,
                    assumed=transfer_syntax not in _IMPLICIT_VR_LITTLE_ENDIAN,
                    in_sequence=False,
                )
            tag, vr, length = yield from self._element_header(raw, explicit, order)
            yield from self._value(tag, vr, length, explicit, order, _DATA_SET_TAGS, depth=0)

    def _element_header(
        self, raw: bytes, explicit: bool, order: str
    ) -> Generator[tuple[int, int], bytes | None, tuple[int, str | None, int]]:
        """Decode an element header whose first 8 bytes are ``raw``."""
        self._count_element()
        tag = _tag(raw, order)
        if not explicit or tag >> 16 == 0xFFFE:
            (length,) = struct.unpack_from(order + "I", raw, 4)
            return tag, None, length
        vr = raw[4:6]
        if vr in _VR_LENGTH_32:
            extension = yield (_READ, 4)
            assert extension is not None
            (length,) = struct.unpack(order + "I", extension)
            return tag, vr.decode(), length
        if not (b"AA" <= vr <= b"ZZ"):
            # pydicom reads an element whose VR is not two capitals as
            # implicit VR (config.assume_implicit_vr_switch, on by default).
            (length,) = struct.unpack_from(order + "I", raw, 4)
            return tag, None, length
        (length,) = struct.unpack_from(order + "H", raw, 6)
        return tag, vr.decode("latin-1"), length

    def _value(
        self,
        tag: int,
        vr: str | None,
        length: int,
        explicit: bool,
        order: str,
        wanted: frozenset[int],
        *,
        depth: int,
    ) -> _Walk:
        """Walk one element's value; keep it when its tag is ``wanted``."""
        if length == _UNDEFINED_LENGTH:
            if vr is None:
                # Only an implicit-VR element of undefined length needs the
                # dictionary: pydicom is imported then, not with the module.
                from pydicom.datadict import dictionary_VR

                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = "SQ"  # pydicom's guess too (it peeks for an item tag)
            if vr in ("SQ", "UN"):
                # PS3.5 §6.2.2: a UN sequence of undefined length is encoded
                # in Implicit VR Little Endian inside.
                inside = (False, "<") if vr == "UN" else (explicit, order)
                self._nesting += 1
                yield from self._sequence(*inside, depth=depth + 1)
            else:
                self._nesting += 1
                yield from self._fragments(order)
            self._nesting -= 1
            if tag in wanted:
                self._values[tag] = "<Sequence>"
            return
        if tag not in wanted:
            yield (_SKIP_FREE if depth == 0 else _SKIP, length)
            return
        if not length:
            # Complete at once: never left "being captured" at a step boundary,
            # where a part ending there would read it as cut ("...").
            self._values[tag] = ""
            return
        kept = min(length, MAX_CAPTURED_VALUE_BYTES)
        self._capturing = tag
        raw = yield (_READ, kept)
        self._capturing = None
        text = _text(raw or b"")
        if kept < length:
            yield (_SKIP_FREE, length - kept)
            text += "..."
        self._values[tag] = text

    def _sequence(self, explicit: bool, order: str, *, depth: int) -> _Walk:
        """Walk the items of a sequence of undefined length to its delimiter."""
        if depth > MAX_HEADER_DEPTH:
            raise _Refused(f"sequences nested more than {MAX_HEADER_DEPTH} deep")
        while True:
            tag, length = yield from self._item_header(order)
            if tag == _SEQUENCE_DELIMITER:
                return
            if tag != _ITEM:
                raise _Refused(f"{_UNREADABLE}expected an item tag, found {_show(tag)}")
            end = None if length == _UNDEFINED_LENGTH else self._offset + length
            yield from self._item(explicit, order, end, depth=depth)

    def _item(self, explicit: bool, order: str, end: int | None, *, depth: int) -> _Walk:
        """Walk one item's data set: to its delimiter, or to ``end`` (defined length)."""
        sniffed: bool | None = None
        while end is None or self._offset < end:
            raw = yield (_READ, 8)
            assert raw is not None
            if sniffed is None:
                sniffed = _sniff_explicit(raw, assumed=explicit, in_sequence=True)
            tag, vr, length = yield from self._element_header(raw, sniffed, order)
            if tag == _ITEM_DELIMITER:
                return
            yield from self._value(tag, vr, length, sniffed, order, frozenset(), depth=depth)
        if end is not None and self._offset > end:
            raise _Refused(f"{_UNREADABLE}an element runs past the end of its item")

    def _fragments(self, order: str) -> _Walk:
        """Walk an undefined-length value made of items (encapsulated data)."""
        while True:
            tag, length = yield from self._item_header(order)
            if tag == _SEQUENCE_DELIMITER:
                return
            if tag != _ITEM or length == _UNDEFINED_LENGTH:
                raise _Refused(f"{_UNREADABLE}expected a fragment item, found {_show(tag)}")
            yield (_SKIP, length)

    def _item_header(self, order: str) -> Generator[tuple[int, int], bytes | None, tuple[int, int]]:
        raw = yield (_READ, 8)
        assert raw is not None
        self._count_element()
        tag = _tag(raw, order)
        (length,) = struct.unpack_from(order + "I", raw, 4)
        return tag, length

    def _count_element(self) -> None:
        self._elements += 1
        if self._elements > self._max_elements:
            raise _Refused(
                f"more than {self._max_elements} elements, items and delimiters"
                " before Series Instance UID (0020,000E)"
            )

    # --- the verdict --------------------------------------------------------

    def _at_end(self) -> DicomHeader | Failed:
        """The verdict for a part that ended before the walk was done."""
        if not self._received:
            return _cannot_understand("empty part")
        if self._offset < _PREAMBLE_BYTES + len(_PREFIX) and not self._in_data_set:
            return _cannot_understand(_NOT_PS3_10)
        if self._nesting:
            return _cannot_understand(f"{_UNREADABLE}the part ends inside a sequence")
        if self._capturing is not None:
            self._values[self._capturing] = _text(bytes(self._pending)) + "..."
        if not self._values.get(_TRANSFER_SYNTAX_UID):
            return _cannot_understand(_NO_TRANSFER_SYNTAX)
        return self._header()

    def _header(self) -> DicomHeader:
        values = self._values
        return DicomHeader(
            transfer_syntax=values[_TRANSFER_SYNTAX_UID],
            media_storage_sop_class=values.get(_MEDIA_STORAGE_SOP_CLASS_UID),
            media_storage_sop_instance=values.get(_MEDIA_STORAGE_SOP_INSTANCE_UID),
            sop_class=values.get(_SOP_CLASS_UID),
            sop_instance=values.get(_SOP_INSTANCE_UID),
            study=values.get(_STUDY_INSTANCE_UID),
            series=values.get(_SERIES_INSTANCE_UID),
        )


def capture_header(data: bytes | memoryview) -> DicomHeader | Failed:
    """The header of a whole part held in memory (tests and tools)."""
    capture = HeaderCapture()
    capture.feed(data)
    return capture.result()


_NOT_PS3_10 = "not a DICOM PS3.10 file: no 128-byte preamble followed by 'DICM'"
_NO_TRANSFER_SYNTAX = "File Meta Information has no Transfer Syntax UID (0002,0010)"
_UNREADABLE = "unreadable DICOM data: "


def _tag(raw: bytes, order: str) -> int:
    group, element = struct.unpack_from(order + "HH", raw)
    return int(group << 16 | element)


def _sniff_explicit(raw: bytes, *, assumed: bool, in_sequence: bool) -> bool:
    """Whether a data set whose first element header is ``raw`` is explicit VR.

    As pydicom's ``_is_implicit_vr``: two capitals where the VR would be mean
    explicit VR; a sequence item may be implicit in an explicit data set
    (PS3.5 §6.2.2), never the other way round.
    """
    if in_sequence and not assumed:
        return False
    return 0x40 < raw[4] < 0x5B and 0x40 < raw[5] < 0x5B


def _text(raw: bytes) -> str:
    """A captured value as text without its padding.

    PS3.5 §6.2: UI is padded to even length with one trailing NUL; some
    writers pad with a space instead, which is tolerated.  UI uses the
    default repertoire, so Latin-1 cannot fail and non-ASCII bytes simply
    make an invalid UID.
    """
    return raw.decode("latin-1").rstrip("\x00 ")


def _show(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _cannot_understand(detail: str) -> Failed:
    """A CANNOT_UNDERSTAND (0xC000) failure, reported without UIDs."""
    return Failed(FailureReason.CANNOT_UNDERSTAND, detail)
