"""DICOM Unique Identifier syntax, shared by routing and validation.

Pure standard library: the ``{study}`` path segment is checked with this before
any body byte is read, and validation checks the UIDs inside each instance.
"""

from __future__ import annotations

# PS3.5 §9.1: "the total length of a UID shall not exceed 64 characters"
# (the VR UI maximum of PS3.5 Table 6.2-1, padding excluded).
MAX_UID_CHARS = 64

_DIGITS = frozenset("0123456789")


def is_valid_uid(value: str, *, accept_leading_zeros: bool = False) -> bool:
    """Return whether ``value`` is a UID this server accepts.

    PS3.5 §9.1: 1 to 64 ASCII digits and dots, with no empty component (no
    leading or trailing dot, no ".."), and no component of several digits
    that starts with 0 ("1.02.3").  The components also matter because the
    UIDs become path names (``<storage>/<Study>/<Series>/<SOP>.dcm``): "." or
    ".." would name a directory that is not the instance's, and a leading dot
    would land among the server's own ``.staging`` and ``.sop-index`` entries.

    ``accept_leading_zeros`` (``--accept-leading-zero-uids``) accepts
    components such as "02", which some modalities in the field emit; it is
    one switch for the URL's study UID and the instances' UIDs alike
    (docs/CONFORMANCE.md §6.1).  Trailing NUL padding (PS3.5 §6.2) must
    already be stripped.
    """
    if not value or len(value) > MAX_UID_CHARS:
        return False
    # str.isdigit() would also accept non-ASCII digits such as "²" or "٣".
    return all(
        component
        and _DIGITS.issuperset(component)
        and (accept_leading_zeros or component[0] != "0" or len(component) == 1)
        for component in value.split(".")
    )
