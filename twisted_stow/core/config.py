"""The server's configuration: one frozen value built from the options.

``config_from_options`` is the one home of option parsing: it turns the raw
option values (as twistd's ``usage.Options`` collects them, names without the
leading ``--``) into a ``StowConfig``, and raises ``ValueError`` naming the
option for a bad value.  ``tap.Options`` only declares the options and wraps
that error into twistd's one-line usage error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .budget import DEFAULT_BUDGET_BYTES, MIN_BUDGET_BYTES, MIN_S3_WINDOW_BYTES
from .deadlines import (
    DEFAULT_BODY_RATE_WINDOW_SECONDS,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_MIN_BODY_RATE_BYTES,
)
from .forwarded import (
    FORWARDED_HEADERS,
    NO_TRUSTED_PROXIES,
    X_FORWARDED_FOR,
    TrustedProxies,
    parse_trusted_proxy,
)
from .identifiers import workflow_id_problem
from .policy import Duplicates, StudyMismatch
from .sizes import parse_size
from .uids import is_valid_uid

# Loopback only (issue 16 point 7, like Orthanc's RemoteAccessAllowed: false):
# serving other addresses takes an explicit --listen.
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
# SIGTERM: how long uploads in flight may take to finish before they are aborted.
DEFAULT_DRAIN_TIMEOUT_SECONDS = 60.0
LOG_FORMATS = ("text", "json")
DEFAULT_STORAGE = "stow-data"
# twisted.web's own default is 12 hours; a client that sends nothing for a
# minute is gone or hostile (time paused for storage does not count).
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0
# The MONAI Informatics Gateway's exchange and workflow-request routing key
# (docs/WORKFLOW.md).
DEFAULT_AMQP_EXCHANGE = "monaideploy"
DEFAULT_AMQP_ROUTING_KEY = "md.workflow.request"
# PyJWT names; asymmetric only (the key we hold is public: HS* would let anyone sign).
DEFAULT_JWT_ALGORITHMS = ("RS256", "ES256")
# Parts (instances) in one request body.  The largest real studies we know of
# are a few thousand instances (a 2,000-slice CT, benchmarks/); 10,000 leaves
# room for them while bounding what a body of tiny or empty parts can queue
# (issue 17 point 3: a million empty parts in 9 MB cost 1.47 GB and 15 s).
DEFAULT_MAX_PARTS = 10_000
# A dot-directory is never a Study Instance UID, so never in the instance tree.
DEFAULT_WORKFLOW_SPOOL_DIR_NAME = ".workflow-spool"
# With s3:// storage the spool cannot live in the bucket: a local directory
# relative to the working directory, as the default storage is.
DEFAULT_S3_WORKFLOW_SPOOL = "stow-workflow-spool"
DEFAULT_S3_REGION = "us-east-1"
# --workers: "auto" is one worker process per CPU this process may run on.
WORKERS_AUTO = "auto"
# More processes than this would only cost memory: each holds its own pools.
MAX_WORKERS = 256
S3_SCHEME = "s3://"
# S3 bucket names (the rules AWS and SeaweedFS share): 3-63 characters.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Target:
    """``--storage s3://BUCKET[/PREFIX]`` with ``--s3-endpoint`` and ``--s3-region``."""

    bucket: str
    prefix: str  # "" or "a/b/": always ends in "/"
    endpoint: str | None  # None: AWS's endpoint of the region
    region: str = DEFAULT_S3_REGION

    @property
    def uri(self) -> str:
        """``s3://BUCKET/PREFIX`` (no trailing slash): the root object keys hang off."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class StowConfig:
    """Everything the server is told at start-up."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    storage: Path = Path(DEFAULT_STORAGE)
    public_url: str | None = None
    # --trust-forwarded-headers: RetrieveURL from X-Forwarded-Proto/Host; with
    # --trusted-proxy only on connections from those addresses.
    trust_forwarded_headers: bool = False
    # --trusted-proxy/--forwarded-header: the balancers whose client address
    # (X-Forwarded-For or Forwarded) the per-peer limit and the throttle use.
    trusted_proxies: TrustedProxies = NO_TRUSTED_PROXIES
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
    # None: no cap.  The part past it stops the request with 413.
    max_parts: int | None = DEFAULT_MAX_PARTS
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
    jwt_algorithms: tuple[str, ...] = DEFAULT_JWT_ALGORITHMS
    # MONAI profile (docs/WORKFLOW.md).  Allowed workflow ids of
    # /dicomweb/{workflow-id}/ (empty: any); workflows of /dicomweb/studies.
    workflows: tuple[str, ...] = ()
    default_workflows: tuple[str, ...] = ()
    # None: <storage>/.workflow-spool.
    workflow_spool: Path | None = None
    amqp_url: str | None = None
    # --amqp-ca: PEM certificates an amqps:// broker's must chain to (None:
    # the system's trust store).
    amqp_ca: Path | None = None
    amqp_exchange: str = DEFAULT_AMQP_EXCHANGE
    amqp_routing_key: str = DEFAULT_AMQP_ROUTING_KEY
    # --accept-leading-zero-uids: UID components such as "02" (PS3.5 §9.1
    # forbids them) accepted in the URL and in the instances alike.
    accept_leading_zero_uids: bool = False
    # Operations (twisted_stow/ops, docs/OPERATIONS.md).
    metrics_listen: str | None = None  # --metrics-listen: GET /metrics there
    drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS
    log_format: str = "text"
    # --min-free-space: below it uploads get 507 from the headers; None: off.
    min_free_bytes: int | None = None
    # --verify-body-digest: with a body Content-Digest, commit no part before
    # the whole body's digest is checked (docs/CONFORMANCE.md, "Digests").
    verify_body_digest: bool = False
    # --storage s3://...: the object store (None: the directory ``storage``).
    s3: S3Target | None = None
    # --workers: how many worker processes share the listening sockets;
    # None: one per CPU (``worker_count``), 1: a single process, no workers.
    workers: int | None = None
    # --index postgresql://USER@HOST:PORT/DB: the cluster's shared index and
    # outbox (None: this node alone, docs/CLUSTER.md).
    index_url: str | None = None
    # --memory-budget: what all uploads of the process may buffer (core/budget.py).
    memory_budget_bytes: int = DEFAULT_BUDGET_BYTES

    @property
    def workflow_spool_dir(self) -> Path:
        """Where workflow requests are spooled (outside the instance tree)."""
        if self.workflow_spool is not None:
            return self.workflow_spool
        if self.s3 is not None:
            return Path(DEFAULT_S3_WORKFLOW_SPOOL)
        return self.storage / DEFAULT_WORKFLOW_SPOOL_DIR_NAME

    @property
    def storage_root(self) -> str:
        """What stored instances are named relative to: ``s3://BUCKET/PREFIX`` or a directory."""
        if self.s3 is not None:
            return self.s3.uri
        return str(self.storage.absolute())


def config_from_options(values: Mapping[str, Any]) -> StowConfig:
    """The ``StowConfig`` of the raw option values; ``ValueError`` names a bad one.

    ``values`` maps each option name (``"max-body-size"``) to its text, a
    list for the repeatable ones, or a flag's 0/1.
    """
    leading_zeros = bool(values["accept-leading-zero-uids"])
    for option in ("sop-class", "transfer-syntax"):
        for uid in values[option]:
            if not is_valid_uid(uid, accept_leading_zeros=leading_zeros):
                raise ValueError(f"--{option}: {uid!r} is not a valid UID")
    rate_window = _seconds_or_none(values["body-rate-window"], "--body-rate-window")
    if rate_window is None:
        raise ValueError("--body-rate-window: must be a number of seconds above 0")
    _check_workflows(values["workflow"], values["default-workflow"])
    mismatch = values["study-mismatch"]
    for description in values["listen"]:
        check_endpoint(description, "--listen")
    if values["metrics-listen"]:
        check_endpoint(values["metrics-listen"], "--metrics-listen")
    drain_timeout = _seconds_or_none(values["drain-timeout"], "--drain-timeout") or 0.0
    if values["log-format"] not in LOG_FORMATS:
        raise ValueError(
            f"--log-format: {values['log-format']!r} is not one of {', '.join(LOG_FORMATS)}"
        )
    s3 = s3_target(values["storage"], values.get("s3-endpoint"), values.get("s3-region"))
    if s3 is not None and values["min-free-space"] not in ("0", 0, None):
        # Free space is a local disk's notion; an object store reports quota
        # errors per instance (0xA700) instead.
        raise ValueError("--min-free-space: needs a local --storage directory, not s3://")
    memory_budget = _memory_budget(values.get("memory-budget"), s3 is not None)
    return StowConfig(
        listen=tuple(values["listen"]) or (DEFAULT_LISTEN,),
        storage=Path(values["storage"]),
        public_url=_public_url_or_none(values["public-url"]),
        trust_forwarded_headers=bool(values["trust-forwarded-headers"]),
        trusted_proxies=_trusted_proxies(
            values.get("trusted-proxy", ()), values.get("forwarded-header")
        ),
        study_mismatch=_choice(StudyMismatch, mismatch, "--study-mismatch") if mismatch else None,
        duplicates=_choice(Duplicates, values["duplicates"], "--duplicates"),
        cors_origins=tuple(values["cors-origin"]),
        max_body_bytes=_size_or_none(values["max-body-size"], "--max-body-size"),
        max_requests=_count_or_none(values["max-requests"], "--max-requests"),
        max_requests_per_peer=_count_or_none(
            values["max-requests-per-peer"], "--max-requests-per-peer"
        ),
        idle_timeout_seconds=_idle_timeout(values["idle-timeout"]),
        sop_classes=frozenset(values["sop-class"]) or None,
        transfer_syntaxes=frozenset(values["transfer-syntax"]) or None,
        max_part_bytes=_size_or_none(values["max-part-size"], "--max-part-size"),
        max_parts=_count_or_none(values["max-parts"], "--max-parts"),
        header_timeout_seconds=_seconds_or_none(values["header-timeout"], "--header-timeout"),
        min_body_rate_bytes=_size_or_none(values["min-body-rate"], "--min-body-rate") or 0,
        body_rate_window_seconds=rate_window,
        users_file=_path_or_none(values["users"]),
        tokens_file=_path_or_none(values["tokens"]),
        jwt_key_file=_path_or_none(values["jwt-key"]),
        jwks_file=_path_or_none(values["jwks"]),
        jwt_audience=values["jwt-audience"],
        jwt_issuer=values["jwt-issuer"],
        jwt_algorithms=tuple(values["jwt-algorithm"]) or DEFAULT_JWT_ALGORITHMS,
        workflows=tuple(values["workflow"]),
        default_workflows=tuple(values["default-workflow"]),
        workflow_spool=_path_or_none(values["workflow-spool"]),
        amqp_url=values["amqp-url"],
        amqp_ca=_path_or_none(values.get("amqp-ca")),
        amqp_exchange=values["amqp-exchange"],
        amqp_routing_key=values["amqp-routing-key"],
        accept_leading_zero_uids=leading_zeros,
        metrics_listen=values["metrics-listen"] or None,
        drain_timeout_seconds=drain_timeout,
        log_format=values["log-format"],
        min_free_bytes=_size_or_none(values["min-free-space"], "--min-free-space"),
        verify_body_digest=bool(values.get("verify-body-digest", 0)),
        s3=s3,
        workers=_workers(values.get("workers")),
        index_url=index_url_or_none(values.get("index")),
        memory_budget_bytes=memory_budget,
    )


def worker_count(workers: int | None, cpus: int) -> int:
    """The worker processes to run: ``--workers``, or one per CPU when it is "auto"."""
    if workers is not None:
        return workers
    return max(1, min(cpus, MAX_WORKERS))


def _workers(text: str | int | None) -> int | None:
    """``--workers``: "auto" (None: one per CPU) or a whole number from 1 to ``MAX_WORKERS``."""
    if text is None or str(text).strip().lower() in ("", WORKERS_AUTO):
        return None
    try:
        value = int(str(text))
    except ValueError:
        raise ValueError(f"--workers: {text!r} is not a whole number or 'auto'") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"--workers: {text!r} must be from 1 to {MAX_WORKERS}, or 'auto'")
    return value


def index_url_or_none(text: str | None) -> str | None:
    """``--index``: a ``postgresql://USER@HOST[:PORT]/DB`` URL without a password.

    A password in argv is visible to every local user (ps, /proc): libpq
    takes it from PGPASSWORD or ~/.pgpass instead.
    """
    if not text:
        return None
    problem = f"--index: {_without_password(text)!r} is not postgresql://USER@HOST[:PORT]/DB"
    try:
        parsed = urlsplit(text)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(problem) from e
    if parsed.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(problem)
    if parsed.password is not None or "password=" in parsed.query.lower():
        raise ValueError(
            "--index: the URL must not hold a password (it would be visible in the process "
            "list): set PGPASSWORD or use ~/.pgpass"
        )
    if not parsed.hostname or not parsed.path.strip("/"):
        raise ValueError(problem)
    return text


def _without_password(text: str) -> str:
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", text)


def _memory_budget(text: str | None, s3: bool) -> int:
    """``--memory-budget``: at least a socket read, and with S3 two of its smallest parts."""
    if text is None:
        return DEFAULT_BUDGET_BYTES
    try:
        value = parse_size(str(text))
    except ValueError as e:
        raise ValueError(f"--memory-budget: {e}") from None
    least = MIN_S3_WINDOW_BYTES if s3 else MIN_BUDGET_BYTES
    if value < least:
        why = "two S3 parts of 5 MiB" if s3 else "a socket read per upload"
        raise ValueError(
            f"--memory-budget: {text!r} is below {least // (1024 * 1024)}M (room for {why})"
        )
    return value


_ENDPOINT_TYPE = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def check_endpoint(description: str, option: str) -> None:
    """A Twisted endpoint description names its type first (``tcp:8080``)."""
    if not _ENDPOINT_TYPE.match(description):
        raise ValueError(
            f"{option}: {description!r} is not a Twisted endpoint description "
            "(e.g. tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem)"
        )


def is_object_store(storage: str) -> bool:
    """Whether ``--storage`` or a ``storage_root`` names an object store (``s3://``)
    rather than a directory: the one place that tells them apart."""
    return storage.startswith(S3_SCHEME)


def s3_target(storage: str, endpoint: str | None, region: str | None) -> S3Target | None:
    """``--storage s3://BUCKET[/PREFIX]`` and its ``--s3-*`` options, or None for a directory."""
    if not is_object_store(storage):
        if endpoint or region:
            raise ValueError("--s3-endpoint/--s3-region: need --storage s3://BUCKET[/PREFIX]")
        return None
    bucket, _, prefix = storage[len(S3_SCHEME) :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"--storage: {bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')"
        )
    segments = [segment for segment in prefix.split("/") if segment]
    if any(segment in (".", "..") or segment.startswith(".") for segment in segments):
        raise ValueError(f"--storage: prefix {prefix!r} has a segment starting with '.'")
    if any(c.isspace() or c in "?#\\" for c in prefix):
        raise ValueError(f"--storage: prefix {prefix!r} holds whitespace, '?', '#' or '\\'")
    region = region or DEFAULT_S3_REGION
    if not re.match(r"^[a-z0-9-]+$", region):
        raise ValueError(f"--s3-region: {region!r} is not a region name (e.g. us-east-1)")
    return S3Target(
        bucket=bucket,
        prefix="".join(f"{segment}/" for segment in segments),
        endpoint=_s3_endpoint_or_none(endpoint),
        region=region,
    )


def _s3_endpoint_or_none(text: str | None) -> str | None:
    """``--s3-endpoint``: ``http(s)://host[:port]`` without path, query or credentials."""
    if not text:
        return None
    problem = f"--s3-endpoint: {text!r} is not http(s)://HOST[:PORT] without a path"
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError as e:
        raise ValueError(f"{problem} ({e})") from e
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(problem)
    return f"{parts.scheme.lower()}://{parts.netloc}"


def _trusted_proxies(addresses: list[str], header: str | None) -> TrustedProxies:
    """``--trusted-proxy`` (repeatable) and ``--forwarded-header``."""
    header = (header or X_FORWARDED_FOR).lower()
    if header not in FORWARDED_HEADERS:
        raise ValueError(
            f"--forwarded-header: {header!r} is not one of {', '.join(FORWARDED_HEADERS)}"
        )
    return TrustedProxies(tuple(parse_trusted_proxy(a) for a in addresses), header)


def _path_or_none(text: str | None) -> Path | None:
    return Path(text) if text else None


def _check_workflows(allowed: list[str], defaults: list[str]) -> None:
    """Workflow ids follow the URL's rule (``identifiers``); defaults must be allowed."""
    for option, names in (("--workflow", allowed), ("--default-workflow", defaults)):
        for name in names:
            problem = workflow_id_problem(name)
            if problem is not None:
                raise ValueError(f"{option}: {name!r} is not a workflow id ({problem})")
    if allowed:
        for name in defaults:
            if name not in allowed:
                raise ValueError(f"--default-workflow: {name!r} is not in the --workflow list")


def _public_url_or_none(text: str | None) -> str | None:
    """``--public-url``: an absolute http(s) URL without query or fragment.

    It is the prefix of every RetrieveURL, so a query or a fragment would end
    up in the middle of them.
    """
    if text is None:
        return None
    problem = f"--public-url: {text!r} is not an absolute http(s) URL without query or fragment"
    try:
        parts = urlsplit(text)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError as e:
        raise ValueError(f"{problem} ({e})") from e
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or "?" in text
        or "#" in text
        or any(c.isspace() for c in text)
    ):
        raise ValueError(problem)
    return text


def _idle_timeout(text: str) -> float:
    """``--idle-timeout`` in seconds: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--idle-timeout: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--idle-timeout: {text!r} must be a finite number of seconds above 0")
    return value


def _size_or_none(text: str, option: str) -> int | None:
    """A size in bytes (``512M``, ``4G``); 0 (any unit) is no limit, as in nginx and dcm4chee."""
    try:
        value = parse_size(text)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None
    return value or None


def _seconds_or_none(text: str, option: str) -> float | None:
    """A finite number of seconds; 0 is None (the guard is off)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{option}: {text!r} must be a finite number of seconds, 0 or more")
    return value or None


def _count_or_none(text: str, option: str) -> int | None:
    """A request cap: a whole number; 0 is no cap (dcm4chee's documented default)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"{option}: {text!r} must be 0 (no limit) or more")
    return value or None


_Choice = TypeVar("_Choice", bound=Enum)


def _choice(choices: type[_Choice], text: str, option: str) -> _Choice:
    """The member of the ``choices`` enum whose value is ``text``."""
    try:
        return choices(text)
    except ValueError:
        allowed = ", ".join(str(choice.value) for choice in choices)
        raise ValueError(f"{option}: {text!r} is not one of {allowed}") from None
