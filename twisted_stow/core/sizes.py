"""Sizes as operators write them (``512M``, ``2GiB``), for the server and the client.

Its own module, importing only ``re``: ``stow-upload`` parses ``--max-bytes``
with it without importing ``core.config`` (which imports validation, and
with it pydicom's UID dictionary).
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``"2G"``, ``"512MiB"``, ``"1000"`` → bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 1000, 512M, 2GiB)")
    number, unit = match.groups()
    return int(number) * _UNIT_BYTES[(unit or "")[:1].lower()]
