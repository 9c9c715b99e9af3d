"""The users file (``--users``) and the tokens file (``--tokens``): JSON objects.

Users file: user name → salted password hash and grant::

    {"alice": {"password": "scrypt$n=16384,r=8,p=1$<salt>$<hash>",
               "aets": "*", "workflows": ["ct-triage"]}}

Tokens file: token name → SHA-256 of the token and grant::

    {"ct-modality": {"sha256": "<hex>", "aets": ["CT1"]}}

``"aets"``/``"workflows"``: ``"*"`` for all, a list of names, or absent for
none.  Neither file ever holds a password or a token in clear.  Both are
written atomically with mode 0600 by ``stow-passwd`` (``command.py``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durable import fsync_directory
from .grants import BadGrant, Grant, names_from_json, names_to_json
from .passwords import BadHashEntry, check_hash_entry

_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BadCredentialsFile(ValueError):
    """A users or tokens file that cannot be used; the message says where."""


@dataclass(frozen=True)
class UserEntry:
    password_hash: str
    grant: Grant


@dataclass(frozen=True)
class TokenEntry:
    name: str
    grant: Grant


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadCredentialsFile(f"{path}: {e.strerror or e}") from e
    except ValueError as e:
        raise BadCredentialsFile(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadCredentialsFile(f"{path}: expected a JSON object of name → entry")
    return data


def _grant(path: Path, name: str, entry: dict[str, Any]) -> Grant:
    try:
        return Grant(
            aets=names_from_json(entry.get("aets"), f"{path}: {name!r} aets"),
            workflows=names_from_json(entry.get("workflows"), f"{path}: {name!r} workflows"),
        )
    except BadGrant as e:
        raise BadCredentialsFile(str(e)) from e


def valid_user_name(name: str) -> bool:
    """Not empty, printable, no colon (RFC 7617 §2: a Basic user-id cannot hold one)."""
    # RFC 7617 §2: the user-id of Basic credentials cannot contain a colon.
    return bool(name) and ":" not in name and name.isprintable()


def load_users(path: Path) -> dict[str, UserEntry]:
    """The users file as name → entry; ``BadCredentialsFile`` on any problem."""
    users: dict[str, UserEntry] = {}
    for name, entry in _read_object(path).items():
        if not valid_user_name(name):
            raise BadCredentialsFile(f"{path}: {name!r} is not a valid user name")
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
            raise BadCredentialsFile(f'{path}: {name!r} needs a "password" hash')
        try:
            check_hash_entry(entry["password"])
        except BadHashEntry as e:
            raise BadCredentialsFile(f"{path}: {name!r}: {e}") from e
        users[name] = UserEntry(entry["password"], _grant(path, name, entry))
    return users


def load_tokens(path: Path) -> dict[str, TokenEntry]:
    """The tokens file as SHA-256 hex → entry; ``BadCredentialsFile`` on any problem."""
    tokens: dict[str, TokenEntry] = {}
    for name, entry in _read_object(path).items():
        if not name or not name.isprintable():
            raise BadCredentialsFile(f"{path}: {name!r} is not a valid token name")
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not _HEX_SHA256.match(digest):
            raise BadCredentialsFile(f'{path}: {name!r} needs a "sha256" of 64 hex digits')
        if digest in tokens:
            raise BadCredentialsFile(f"{path}: {name!r} has the same token as another entry")
        tokens[digest] = TokenEntry(name, _grant(path, name, entry))
    return tokens


def read_for_update(path: Path) -> dict[str, Any]:
    """The file's object for ``stow-passwd`` to change; empty when it does not exist."""
    if not path.exists():
        return {}
    return _read_object(path)


def entry_with_grant(fields: dict[str, Any], grant: Grant) -> dict[str, Any]:
    """``fields`` plus the file form of ``grant`` (absent keys mean none)."""
    entry = dict(fields)
    for key, names in (("aets", grant.aets), ("workflows", grant.workflows)):
        if names is None or names:
            entry[key] = names_to_json(names)
    return entry


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON: a temporary file, fsync, rename; mode 0600."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    fsync_directory(directory)
