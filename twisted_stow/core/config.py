"""The server's configuration: one frozen value built from the options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .deadlines import (
    DEFAULT_BODY_RATE_WINDOW_SECONDS,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_MIN_BODY_RATE_BYTES,
)
from .policy import Duplicates, StudyMismatch

DEFAULT_LISTEN = "tcp:8080"
DEFAULT_STORAGE = "stow-data"
# twisted.web's own default is 12 hours; a client that sends nothing for a
# minute is gone or hostile (time paused for storage does not count).
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0
# MONAI's exchange and workflow-request routing key (SPEC.md §4a).
DEFAULT_AMQP_EXCHANGE = "monaideploy"
DEFAULT_AMQP_ROUTING_KEY = "md.workflow.request"
# A dot-directory is never a Study Instance UID, so never in the instance tree.
DEFAULT_WORKFLOW_SPOOL_DIR_NAME = ".workflow-spool"

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``"2G"``, ``"512MiB"``, ``"1000"`` → bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 1000, 512M, 2GiB)")
    number, unit = match.groups()
    return int(number) * _UNIT_BYTES[(unit or "")[:1].lower()]


@dataclass(frozen=True)
class StowConfig:
    """Everything the server is told at start-up."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    storage: Path = Path(DEFAULT_STORAGE)
    public_url: str | None = None
    trust_forwarded_headers: bool = False
    # None: the route family decides (reject on the standard and dcm4chee
    # routes, warn on the MONAI routes, as the MONAI seed documents).
    study_mismatch: StudyMismatch | None = None
    duplicates: Duplicates = Duplicates.REJECT
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int | None = None
    # None: no cap.  Over a cap the client gets 503 with Retry-After.
    max_requests: int | None = None
    max_requests_per_peer: int | None = None
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    # None: every storage SOP class / transfer syntax pydicom knows.
    sop_classes: frozenset[str] | None = None
    transfer_syntaxes: frozenset[str] | None = None
    # None: no cap.  A part over it stops the request with 413.
    max_part_bytes: int | None = None
    # Slow clients (slowloris): None / 0 disable each guard.
    header_timeout_seconds: float | None = DEFAULT_HEADER_TIMEOUT_SECONDS
    min_body_rate_bytes: int = DEFAULT_MIN_BODY_RATE_BYTES
    body_rate_window_seconds: float = DEFAULT_BODY_RATE_WINDOW_SECONDS
    # Authentication (twisted_stow/auth/): off unless one of these is set.
    users_file: Path | None = None  # --users: HTTP Basic against salted hashes
    tokens_file: Path | None = None  # --tokens: hashed static bearer tokens
    jwt_key_file: Path | None = None  # --jwt-key: PEM public key for JWTs
    jwks_file: Path | None = None  # --jwks: JWKS file for JWTs
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")  # auth.jwt_verify.DEFAULT_ALGORITHMS
    # MONAI profile (docs/WORKFLOW.md).  Allowed workflow ids of
    # /dicomweb/{workflow-id}/ (empty: any); workflows of /dicomweb/studies.
    workflows: tuple[str, ...] = ()
    default_workflows: tuple[str, ...] = ()
    # None: <storage>/.workflow-spool.
    workflow_spool: Path | None = None
    amqp_url: str | None = None
    amqp_exchange: str = DEFAULT_AMQP_EXCHANGE
    amqp_routing_key: str = DEFAULT_AMQP_ROUTING_KEY

    @property
    def workflow_spool_dir(self) -> Path:
        """Where workflow requests are spooled (outside the instance tree)."""
        if self.workflow_spool is not None:
            return self.workflow_spool
        return self.storage / DEFAULT_WORKFLOW_SPOOL_DIR_NAME
