"""twistd glue: ``Options`` and ``makeService`` for ``twistd stow``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from .config import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_LISTEN,
    DEFAULT_STORAGE,
    StowConfig,
    parse_size,
)
from .ingest import Duplicates, StudyMismatch
from .site import make_site
from .storage.filesystem import FilesystemStorage
from .uids import is_valid_uid


class Options(usage.Options):
    """Command-line options of ``twistd stow``."""

    synopsis = "[options]"
    longdesc = (
        "A DICOMweb STOW-RS server that stores each instance as its bytes arrive. "
        "Routes: /studies[/{study}], /dicomweb/[{workflow-id}/]studies[/{study}], "
        "/aets/{AET}/rs/studies[/{study}]."
    )
    optParameters = [
        ["storage", "s", DEFAULT_STORAGE, "Directory where instances are stored."],
        [
            "public-url",
            None,
            None,
            (
                "Externally visible base URL for RetrieveURL (e.g. https://pacs.example); "
                "default: built from the request."
            ),
        ],
        [
            "study-mismatch",
            None,
            None,
            (
                "Instance of another study than the URL's: 'reject' (FailureReason 0xA900) or "
                "'warn' (stored, WarningReason 0xB007). Default: reject, but warn on /dicomweb/."
            ),
        ],
        [
            "duplicates",
            None,
            "reject",
            (
                "SOP Instance UID already stored with other bytes: 'reject' (FailureReason "
                "0x0111) or 'overwrite'. Identical bytes always succeed without a rewrite."
            ),
        ],
        [
            "max-body-size",
            None,
            None,
            "Largest request body accepted, e.g. 10G (413 above it). Default: no limit.",
        ],
        [
            "max-uploads",
            None,
            None,
            (
                "Uploads received at once, in total; above it clients get 503 with Retry-After. "
                "Default: no limit."
            ),
        ],
        [
            "max-uploads-per-peer",
            None,
            None,
            (
                "Uploads received at once from one client address (503 with Retry-After above "
                "it). Default: no limit."
            ),
        ],
        [
            "idle-timeout",
            None,
            str(DEFAULT_IDLE_TIMEOUT_SECONDS),
            (
                "Seconds a client may stay silent before it is disconnected (time paused for "
                "slow storage does not count)."
            ),
        ],
    ]
    optFlags = [
        [
            "trust-forwarded-headers",
            None,
            (
                "Build RetrieveURL from X-Forwarded-Proto/X-Forwarded-Host (only behind a proxy "
                "you control)."
            ),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["cors-origin"] = []
        self["sop-class"] = []
        self["transfer-syntax"] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on (Twisted endpoint string, repeatable). Default: tcp:8080."""
        self["listen"].append(description)

    def opt_cors_origin(self, origin: str) -> None:
        """Browser origin allowed to POST (CORS; repeatable, '*' for any). Default: none."""
        self["cors-origin"].append(origin)

    def opt_sop_class(self, uid: str) -> None:
        """Only accept this SOP Class (repeatable; others: 0x0122). Default: all storage."""
        self["sop-class"].append(uid)

    def opt_transfer_syntax(self, uid: str) -> None:
        """Only accept this Transfer Syntax (repeatable; others: 0xC122). Default: all storable."""
        self["transfer-syntax"].append(uid)

    def postOptions(self) -> None:
        for option in ("sop-class", "transfer-syntax"):
            for uid in self[option]:
                if not is_valid_uid(uid):
                    raise usage.UsageError(f"--{option}: {uid!r} is not a valid UID")
        try:
            max_body = parse_size(self["max-body-size"]) if self["max-body-size"] else None
            idle = float(self["idle-timeout"])
            max_uploads = _positive_or_none(self["max-uploads"], "--max-uploads")
            max_per_peer = _positive_or_none(self["max-uploads-per-peer"], "--max-uploads-per-peer")
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        try:
            mismatch = StudyMismatch(self["study-mismatch"]) if self["study-mismatch"] else None
            duplicates = Duplicates(self["duplicates"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        self.config = StowConfig(
            listen=tuple(self["listen"]) or (DEFAULT_LISTEN,),
            storage=Path(self["storage"]),
            public_url=self["public-url"],
            trust_forwarded_headers=bool(self["trust-forwarded-headers"]),
            study_mismatch=mismatch,
            duplicates=duplicates,
            cors_origins=tuple(self["cors-origin"]),
            max_body_bytes=max_body,
            max_uploads=max_uploads,
            max_uploads_per_peer=max_per_peer,
            idle_timeout_seconds=idle,
            sop_classes=frozenset(self["sop-class"]) or None,
            transfer_syntaxes=frozenset(self["transfer-syntax"]) or None,
        )


def _positive_or_none(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f"{option} must be at least 1")
    return value


class _StorageService(Service):
    """Starts and stops the storage's worker threads with the application."""

    def __init__(self, storage: FilesystemStorage) -> None:
        self.storage = storage

    def startService(self) -> None:
        self.storage.start()
        super().startService()

    def stopService(self) -> Any:
        self.storage.stop()
        return super().stopService()


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The server: storage plus one listening service per ``--listen``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config: StowConfig = options.config
    storage = FilesystemStorage(config.storage, reactor)
    site = make_site(config, storage, reactor)
    top = MultiService()
    _StorageService(storage).setServiceParent(top)
    for description in config.listen:
        endpoint = serverFromString(reactor, description)
        StreamServerEndpointService(endpoint, site).setServiceParent(top)
    return top
