"""DICOM Unique Identifier syntax (PS3.5 §9.1), shared by routing and validation.

Pure standard library: the ``{study}`` path segment is checked with this before
any body byte is read, and validation checks the UIDs inside each instance.
"""

from __future__ import annotations

# PS3.5 §9.1: "the total length of a UID shall not exceed 64 characters"
# (the VR UI maximum of PS3.5 Table 6.2-1, padding excluded).
MAX_UID_CHARS = 64

_DIGITS = frozenset("0123456789")


def is_valid_uid(value: str) -> bool:
    """Return whether ``value`` is a UID as PS3.5 §9.1 defines it.

    A UID is 1 to 64 characters of components separated by single dots; each
    component is one or more ASCII digits and, when longer than one digit,
    does not start with "0" ("1.0.3" is valid, "1.02.3", "1..3" and "1." are
    not).  Trailing NUL padding (PS3.5 §6.2) must already be stripped.
    """
    if not value or len(value) > MAX_UID_CHARS:
        return False
    for component in value.split("."):
        # str.isdigit() would also accept non-ASCII digits such as "²" or "٣".
        if not component or not _DIGITS.issuperset(component):
            return False
        if len(component) > 1 and component[0] == "0":
            return False
    return True
