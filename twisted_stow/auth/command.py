"""``stow-passwd``: add users and static tokens to the files ``twistd stow`` reads.

    stow-passwd user  USERS_FILE NAME  [--aet AET]... [--workflow ID]...
    stow-passwd token TOKENS_FILE NAME [--aet AET]... [--workflow ID]...
    stow-passwd remove FILE NAME

``user`` reads the password from the terminal (asked twice) or, when stdin
is not a terminal, from its first line: never from the command line, where
``ps`` and shell history would show it.  ``token`` draws a random token,
prints it once on stdout and stores only its SHA-256.  Without ``--aet``
and ``--workflow`` the entry may store everywhere (``*``); with either,
only where they say (``*`` among them means all).  The server reads the
files at start-up: restart it after a change.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .files import (
    BadCredentialsFile,
    entry_with_grant,
    load_tokens,
    load_users,
    read_for_update,
    valid_user_name,
    write_atomically,
)
from .grants import EVERYTHING, BadGrant, Grant, grant_from_names
from .passwords import SCRYPT_N, hash_password, new_token, token_digest

# Below 2**10 a guess costs nothing; above 2**17 (128 MiB, ~0.5 s) one login
# would hold the server's one KDF thread, and every first login behind it, too long.
MIN_LOG2_N, MAX_LOG2_N = 10, 17


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stow-passwd", description="Edit twisted-stow's users and tokens files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("user", "users"), ("token", "tokens")):
        sub = commands.add_parser(name, help=f"add or replace an entry of a {what} file")
        sub.add_argument("file", type=Path)
        sub.add_argument("name")
        sub.add_argument("--aet", action="append", default=[], help="AE title allowed (or *)")
        sub.add_argument(
            "--workflow", action="append", default=[], help="workflow id allowed (or *)"
        )
        if name == "user":
            sub.add_argument(
                "--scrypt-log2-n",
                type=int,
                choices=range(MIN_LOG2_N, MAX_LOG2_N + 1),
                default=SCRYPT_N.bit_length() - 1,
                metavar="K",
                help=f"scrypt cost n = 2**K (default %(default)s, {MIN_LOG2_N}-{MAX_LOG2_N})",
            )
    remove = commands.add_parser("remove", help="remove an entry from a users or tokens file")
    remove.add_argument("file", type=Path)
    remove.add_argument("name")
    return parser


def _grant(aets: Sequence[str], workflows: Sequence[str]) -> Grant:
    if not aets and not workflows:
        return EVERYTHING
    try:
        return grant_from_names(aets, workflows)
    except BadGrant as e:
        raise SystemExit(f"stow-passwd: {e}") from None


def _read_password() -> bytes:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password again: "):
            raise SystemExit("stow-passwd: the passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("stow-passwd: empty password")
    return password.encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stow-passwd``; returns the exit status."""
    args = _parser().parse_args(argv)
    path: Path = args.file
    try:
        data = read_for_update(path)
        if args.command == "user":
            if not valid_user_name(args.name):
                raise SystemExit(f"stow-passwd: {args.name!r} is not a valid user name")
            password_hash = hash_password(_read_password(), n=2**args.scrypt_log2_n)
            data[args.name] = entry_with_grant(
                {"password": password_hash}, _grant(args.aet, args.workflow)
            )
            load_check: Callable[[Path], Any] = load_users
        elif args.command == "token":
            token = new_token()
            data[args.name] = entry_with_grant(
                {"sha256": token_digest(token.encode("ascii"))}, _grant(args.aet, args.workflow)
            )
            load_check = load_tokens
        else:
            if data.pop(args.name, None) is None:
                raise SystemExit(f"stow-passwd: no entry {args.name!r} in {path}")
            write_atomically(path, data)
            return 0
        write_atomically(path, data)
        load_check(path)  # what was written reads back as the server will read it
    except BadCredentialsFile as e:
        raise SystemExit(f"stow-passwd: {e}") from None
    if args.command == "token":
        print(token)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
