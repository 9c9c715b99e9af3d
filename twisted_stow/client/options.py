"""The command line of ``stow-upload`` and the credentials it names.  Pure.

Secrets never come from argv (where ``ps`` shows them): a password comes
from ``--password-file``, ``STOW_PASSWORD`` or a prompt; a bearer token
from ``--token-file`` or ``STOW_TOKEN``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..core.sizes import parse_size
from .batching import DEFAULT_MAX_INSTANCES, DEFAULT_MAX_REQUEST_BYTES
from .retry import DEFAULT_RETRIES

DEFAULT_CONCURRENCY = 4
# No answer within this long after the body was sent (the whole request for
# treq): the request is cancelled and retried like a connection error.
DEFAULT_TIMEOUT_SECONDS = 900.0
PASSWORD_ENV = "STOW_PASSWORD"
TOKEN_ENV = "STOW_TOKEN"


class UsageError(Exception):
    """The command line (or a secret it names) cannot be used; exit status 2."""


@dataclass(frozen=True)
class Settings:
    """Everything ``stow-upload`` was told."""

    url: str  # the STOW base, without a trailing slash
    paths: tuple[str, ...]
    study: str | None = None
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    concurrency: int = DEFAULT_CONCURRENCY
    retries: int = DEFAULT_RETRIES
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    journal: Path | None = None
    report: Path | None = None
    quiet: bool = False
    authorization: str | None = None  # the Authorization header value
    cacert: Path | None = None
    gzip: bool = False  # send bodies with Content-Encoding: gzip

    @property
    def target(self) -> str:
        """Where every request is POSTed."""
        return f"{self.url}/studies" + (f"/{self.study}" if self.study else "")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stow-upload",
        # No abbreviations: "--password SECRET" must not pass as --password-file.
        allow_abbrev=False,
        description=(
            "Upload folders of DICOM files to a DICOMweb STOW-RS server, streamed, "
            "with retries, progress and resume (docs/UPLOAD.md)."
        ),
    )
    p.add_argument("url", help="STOW base URL, e.g. http://host:8080 or http://host:8042/dicom-web")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="files or folders; - reads paths from stdin"
    )
    p.add_argument("--study", metavar="UID", help="POST to URL/studies/UID instead of URL/studies")
    p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES, metavar="N")
    p.add_argument(
        "--max-bytes", default=str(DEFAULT_MAX_REQUEST_BYTES), metavar="SIZE", help="e.g. 512M"
    )
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS")
    p.add_argument(
        "--journal", type=Path, metavar="FILE", help="resume journal (read, then appended)"
    )
    p.add_argument("--report", type=Path, metavar="FILE", help="one JSON line per file")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    p.add_argument("--user", metavar="NAME", help="HTTP Basic user (password: see --password-file)")
    p.add_argument("--password-file", type=Path, metavar="FILE")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="Bearer token (or STOW_TOKEN)")
    p.add_argument("--cacert", type=Path, metavar="FILE", help="PEM CA certificates to trust")
    p.add_argument(
        "--gzip",
        action="store_true",
        help="compress each body as it is sent (Content-Encoding: gzip); for slow links",
    )
    return p


def _secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip("\r\n")
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def authorization(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    prompt: Callable[[str], str] = getpass.getpass,
) -> str | None:
    """The ``Authorization`` header value the options ask for, or None."""
    if args.user is not None and args.token_file is not None:
        raise UsageError("--user and --token-file exclude each other")
    if args.user is not None:
        if ":" in args.user:
            raise UsageError("a Basic user name cannot hold ':' (RFC 7617 §2)")
        if args.password_file is not None:
            password = _secret_file(args.password_file)
        elif PASSWORD_ENV in environ:
            password = environ[PASSWORD_ENV]
        else:
            password = prompt(f"Password for {args.user}: ")
        return basic_authorization(args.user, password)
    if args.password_file is not None:
        raise UsageError("--password-file needs --user")
    if args.token_file is not None:
        return f"Bearer {_secret_file(args.token_file)}"
    if environ.get(TOKEN_ENV):
        return f"Bearer {environ[TOKEN_ENV].strip()}"
    return None


def basic_authorization(user: str, password: str) -> str:
    """RFC 7617 credentials, UTF-8 encoded."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def settings_from(
    argv: Sequence[str],
    environ: Mapping[str, str] = os.environ,
    read_stdin: Callable[[], str] = lambda: "",
    prompt: Callable[[str], str] = getpass.getpass,
) -> Settings:
    """Parse ``argv``; raises ``UsageError`` (argparse's own errors exit with 2 itself)."""
    args = parser().parse_args(list(argv))
    scheme = urlsplit(args.url).scheme
    if scheme not in ("http", "https") or not urlsplit(args.url).netloc:
        raise UsageError(f"not an http(s) URL: {args.url}")
    for name in ("max_instances", "concurrency"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.retries < 0 or args.timeout <= 0:
        raise UsageError("--retries must be 0 or more and --timeout more than 0")
    try:
        max_bytes = parse_size(args.max_bytes)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if max_bytes < 1:
        raise UsageError("--max-bytes must be at least 1")
    paths: list[str] = []
    for path in args.paths:
        if path == "-":
            paths += [line for line in read_stdin().splitlines() if line.strip()]
        else:
            paths.append(path)
    return Settings(
        url=args.url.rstrip("/"),
        paths=tuple(paths),
        study=args.study,
        max_instances=args.max_instances,
        max_bytes=max_bytes,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout_seconds=args.timeout,
        journal=args.journal,
        report=args.report,
        quiet=args.quiet,
        authorization=authorization(args, environ, prompt),
        cacert=args.cacert,
        gzip=args.gzip,
    )
