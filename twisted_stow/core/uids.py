"""DICOM Unique Identifier syntax, shared by routing and validation.

Pure standard library: the ``{study}`` path segment is checked with this before
any body byte is read, and validation checks the UIDs inside each instance.
"""

from __future__ import annotations

# PS3.5 §9.1: "the total length of a UID shall not exceed 64 characters"
# (the VR UI maximum of PS3.5 Table 6.2-1, padding excluded).
MAX_UID_CHARS = 64

_DIGITS = frozenset("0123456789")


def is_valid_uid(value: str) -> bool:
    """Return whether ``value`` is a UID this server accepts.

    The rule is the issue's "at most 64 characters of digits and dots": 1 to
    64 ASCII digits and dots, with no empty component, so no leading or
    trailing dot and no "..".  The components matter because the UIDs become
    path names (``<storage>/<Study>/<Series>/<SOP>.dcm``): "." or ".." would
    name a directory that is not the instance's, and a leading dot would land
    among the server's own ``.staging`` and ``.sop-index`` entries.

    Leading zeros in a component ("1.02.3") are tolerated on purpose: PS3.5
    §9.1 forbids them, but real modalities send them, and an instance must
    never be lost over it.  The accepted set is therefore a documented superset
    of PS3.5 §9.1 (docs/CONFORMANCE.md §6.1).  Trailing NUL padding (PS3.5
    §6.2) must already be stripped.
    """
    if not value or len(value) > MAX_UID_CHARS:
        return False
    # str.isdigit() would also accept non-ASCII digits such as "²" or "٣".
    return all(component and _DIGITS.issuperset(component) for component in value.split("."))
