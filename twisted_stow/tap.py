"""twistd glue: ``Options`` and ``makeService`` for ``twistd stow``."""

from __future__ import annotations

import getopt
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList
from twisted.python import usage

from .auth.guard import Guard
from .core.config import (
    DEFAULT_AMQP_EXCHANGE,
    DEFAULT_AMQP_ROUTING_KEY,
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_MAX_PARTS,
    DEFAULT_STORAGE,
    WORKERS_AUTO,
    StowConfig,
    config_from_options,
    worker_count,
)
from .core.configfile import merge, read_config_file
from .core.deadlines import (
    DEFAULT_BODY_RATE_WINDOW_SECONDS,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_MIN_BODY_RATE_BYTES,
)
from .ops import reload, startup
from .site import make_services
from .workflow.amqp import check_amqp_url


class Options(usage.Options):
    """Command-line options of ``twistd stow``."""

    synopsis = "[options]"
    longdesc = (
        "A DICOMweb STOW-RS server that stores each instance as its bytes arrive. "
        "Routes: /studies[/{study}], /dicomweb/[{workflow-id}/]studies[/{study}], "
        "/aets/{AET}/rs/studies[/{study}]."
    )
    optParameters = [
        [
            "storage",
            "s",
            DEFAULT_STORAGE,
            (
                "Directory where instances are stored, or s3://BUCKET[/PREFIX] for an "
                "S3-compatible object store (README 'Object storage (S3)')."
            ),
        ],
        [
            "s3-endpoint",
            None,
            None,
            (
                "S3 endpoint URL, http(s)://HOST[:PORT] (any S3-compatible store). Default: "
                "AWS's for --s3-region. Credentials come from botocore's standard chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, shared files)."
            ),
        ],
        ["s3-region", None, None, "S3 region (SigV4). Default: us-east-1."],
        [
            "public-url",
            None,
            None,
            (
                "Externally visible base URL for RetrieveURL: absolute http(s), no query or "
                "fragment (e.g. https://pacs.example/dicomweb). Default: built from the request."
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
            "0",
            ("Largest request body accepted, e.g. 512M or 10G (413 above it); 0 means no limit."),
        ],
        [
            "max-requests",
            None,
            "0",
            (
                "STOW requests received at once, in total; above it clients get 503 with "
                "Retry-After. 0 means no limit."
            ),
        ],
        [
            "max-requests-per-peer",
            None,
            "0",
            (
                "STOW requests received at once from one client address (503 with Retry-After "
                "above it). 0 means no limit."
            ),
        ],
        [
            "workflow-spool",
            None,
            None,
            (
                "Directory of the MONAI routes' workflow requests, one JSON file each "
                "(docs/WORKFLOW.md); with --amqp-url the outbox. "
                "Default: <storage>/.workflow-spool; with s3:// storage ./stow-workflow-spool."
            ),
        ],
        [
            "amqp-url",
            None,
            None,
            (
                "Publish workflow requests to this RabbitMQ broker "
                "(amqp://user:pass@host:port/vhost, or amqps:// for TLS) with publisher "
                "confirms; while it is down they wait in the spool."
            ),
        ],
        [
            "amqp-ca",
            None,
            None,
            (
                "PEM CA certificates the amqps:// broker's certificate must chain to. "
                "Default: the system's trust store."
            ),
        ],
        ["amqp-exchange", None, DEFAULT_AMQP_EXCHANGE, "Exchange (topic, durable) to publish to."],
        ["amqp-routing-key", None, DEFAULT_AMQP_ROUTING_KEY, "Routing key of workflow requests."],
        [
            "index",
            None,
            None,
            (
                "postgresql://USER@HOST:PORT/DB: the SOP instance index and workflow outbox "
                "shared by every node of a cluster (docs/CLUSTER.md); the password comes from "
                "PGPASSWORD or ~/.pgpass, never the URL."
            ),
        ],
        [
            "idle-timeout",
            None,
            str(DEFAULT_IDLE_TIMEOUT_SECONDS),
            (
                "Seconds (more than 0) a client may stay silent before it is disconnected "
                "(time paused for slow storage does not count)."
            ),
        ],
        [
            "max-part-size",
            None,
            "0",
            (
                "Largest instance (multipart part) accepted, e.g. 2G; a larger one stops the "
                "request with 413 (instances already received stay stored). 0 means no limit."
            ),
        ],
        [
            "max-parts",
            None,
            str(DEFAULT_MAX_PARTS),
            (
                "Most parts (instances, empty ones included) in one request; the next one "
                "stops the request with 413 (instances already received stay stored). "
                "0 means no limit."
            ),
        ],
        [
            "memory-budget",
            None,
            "32M",
            (
                "Bytes all uploads of this process may buffer (received, not yet stored), "
                "e.g. 256M; uploads past it wait their turn with their sockets paused."
            ),
        ],
        [
            "header-timeout",
            None,
            f"{DEFAULT_HEADER_TIMEOUT_SECONDS:g}",
            (
                "Seconds from the first byte of a request to the end of its headers; a client "
                "that trickles them slower gets 408 and is disconnected. 0 disables it."
            ),
        ],
        [
            "min-body-rate",
            None,
            str(DEFAULT_MIN_BODY_RATE_BYTES),
            (
                "Least bytes per second a body must average over each --body-rate-window "
                "(time paused for slow storage does not count), e.g. 1K; a slower client gets "
                "408 and is disconnected. 0 disables it."
            ),
        ],
        [
            "body-rate-window",
            None,
            f"{DEFAULT_BODY_RATE_WINDOW_SECONDS:g}",
            "Seconds of reading over which --min-body-rate is averaged (more than 0).",
        ],
    ]
    # Behind load balancers (docs/DEPLOY.md).
    optParameters += [
        [
            "forwarded-header",
            None,
            "x-forwarded-for",
            (
                "Header the --trusted-proxy balancers name the client in: 'x-forwarded-for' "
                "(haproxy option forwardfor, nginx) or 'forwarded' (RFC 7239)."
            ),
        ],
    ]
    # Authentication (README "Authentication", docs/CONFORMANCE.md §10).
    optParameters += [
        [
            "users",
            None,
            None,
            "Users file for HTTP Basic (salted hashes and grants; edit with stow-passwd).",
        ],
        ["tokens", None, None, "Static bearer tokens file (SHA-256 digests and grants)."],
        ["jwt-key", None, None, "PEM public key that signs accepted JWT bearer tokens."],
        ["jwks", None, None, "JWKS file (RFC 7517) of keys that sign accepted JWTs."],
        ["jwt-audience", None, None, "Required JWT 'aud' (needed with --jwt-key/--jwks)."],
        ["jwt-issuer", None, None, "Required JWT 'iss' (needed with --jwt-key/--jwks)."],
    ]
    # Operations (docs/OPERATIONS.md).
    optParameters += [
        [
            "config",
            None,
            None,
            "TOML file of options under their long names; the command line overrides it.",
        ],
        [
            "metrics-listen",
            None,
            None,
            "Endpoint serving GET /metrics (Prometheus), e.g. tcp:9108:interface=127.0.0.1.",
        ],
        [
            "drain-timeout",
            None,
            f"{DEFAULT_DRAIN_TIMEOUT_SECONDS:g}",
            "Seconds SIGTERM lets uploads in flight finish before aborting them, then exits 0.",
        ],
        ["log-format", None, "text", "Log lines as 'text' or 'json' (one object per line)."],
        [
            "min-free-space",
            None,
            "0",
            "Free space the storage must keep, e.g. 10G: below it uploads get 507. 0: off.",
        ],
        [
            "workers",
            None,
            WORKERS_AUTO,
            (
                "Worker processes sharing the listening sockets, supervised by the main "
                "process; 'auto' is one per CPU, 1 a single process (docs/OPERATIONS.md)."
            ),
        ],
    ]
    optFlags = [
        [
            "trust-forwarded-headers",
            None,
            (
                "Build RetrieveURL from X-Forwarded-Proto/X-Forwarded-Host; with --trusted-proxy "
                "only on connections from those (without it from anyone: deprecated)."
            ),
        ],
        [
            "accept-leading-zero-uids",
            None,
            (
                "Accept UID components with a leading zero (1.02.3), which PS3.5 9.1 forbids but "
                "some modalities emit, in the URL's study UID and in the instances alike."
            ),
        ],
        [
            "verify-body-digest",
            None,
            (
                "With a request Content-Digest, store no instance before the whole body's "
                "digest is checked (a mismatch then stores nothing)."
            ),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        for name in REPEATABLE:
            self[name] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to listen on (repeatable). Default: tcp:8080:interface=127.0.0.1 (loopback)"""
        self["listen"].append(description)

    def opt_trusted_proxy(self, address: str) -> None:
        """Load balancer (IP or CIDR, repeatable) whose X-Forwarded-For names the client
        for the per-peer limit, the login throttle and the logs. Default: none."""
        self["trusted-proxy"].append(address)

    def opt_cors_origin(self, origin: str) -> None:
        """Browser origin allowed to POST (CORS; repeatable, '*' for any). Default: none."""
        self["cors-origin"].append(origin)

    def opt_sop_class(self, uid: str) -> None:
        """Only accept this SOP Class (repeatable; others: 0x0122). Default: all storage."""
        self["sop-class"].append(uid)

    def opt_transfer_syntax(self, uid: str) -> None:
        """Only accept this Transfer Syntax (repeatable; others: 0xC122). Default: all known."""
        self["transfer-syntax"].append(uid)

    def opt_jwt_algorithm(self, name: str) -> None:
        """Accepted JWT signature algorithm (repeatable, asymmetric). Default: RS256, ES256."""
        self["jwt-algorithm"].append(name)

    def opt_workflow(self, name: str) -> None:
        """Allow this workflow id in /dicomweb/{workflow-id}/ (repeatable; others: 404)."""
        self["workflow"].append(name)

    def opt_default_workflow(self, name: str) -> None:
        """Workflow requested by POSTs to /dicomweb/studies without an id (repeatable)."""
        self["default-workflow"].append(name)

    def getUsage(self, width: int | None = None) -> str:
        """twistd's option lines, grouped by topic (``HELP_GROUPS``) after a few examples.

        twistd sorts every option alphabetically in one list; its chunks are
        kept (same columns and wrapping) and only rearranged here.
        """
        text = super().getUsage(width)
        head, _, rest = text.partition("Options:\n")
        chunks: dict[str, str] = {}
        tail = []
        name = None
        for line in rest.splitlines(keepends=True):
            start = _OPTION_LINE.match(line)
            if start is not None:
                name = start.group(1)
                chunks[name] = line
            elif name is not None and line.startswith(" "):
                chunks[name] += line
            else:
                name = None
                tail.append(line)
        sections = []
        for title, names in HELP_GROUPS:
            lines = "".join(chunks.pop(n) for n in names if n in chunks)
            sections.append(f"{title}:\n{lines}")
            if title == HELP_GROUPS[0][0]:
                sections.append(HELP_EXAMPLES)
        if chunks:  # an option no group names yet: still shown
            sections.append("Other options:\n" + "".join(chunks.values()))
        return head + "\n".join(sections) + "".join(tail)

    def opt_version(self) -> None:
        """Print this package's version and Twisted's, and exit."""
        print(startup.versions())
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse; under twistd a bad option is one line and exit status 2, not the help."""
        arguments = sys.argv[1:] if options is None else list(options)
        # What a worker process parses again (twisted_stow/workers/child.py).
        self.arguments = arguments
        self.given = self._given(arguments)
        try:
            super().parseOptions(arguments)
        except usage.UsageError as e:
            if self.parent is None:  # called directly (tests, tools): the error itself
                raise
            startup.fail(str(e))

    def _given(self, arguments: list[str]) -> set[str]:
        """The long names of the options on the command line (they override --config)."""
        try:
            found, _ = getopt.getopt(arguments, self.shortOpt, self.longOpt)
        except getopt.error:
            return set()  # parseOptions reports it
        names = set()
        for flag, _value in found:
            name = flag.lstrip("-")
            names.add(self.synonyms.get(name, self.synonyms.get(name.replace("-", "_"), name)))
        return {name.replace("_", "-") for name in names}

    def postOptions(self) -> None:
        """Check each value and build ``self.config``; a bad value is a ``UsageError``."""
        values: Any = self
        try:
            if self["config"]:
                from_file = read_config_file(
                    Path(self["config"]),
                    parameters={str(option[0]) for option in self.optParameters},  # type: ignore[index]
                    flags={str(option[0]) for option in self.optFlags},
                    repeatable=REPEATABLE,
                )
                values = merge(from_file, dict(self), self.given)
            self.config = config_from_options(values)
            if self.config.amqp_url is not None:
                check_amqp_url(self.config.amqp_url, self.config.amqp_ca)
            elif self.config.amqp_ca is not None:
                raise ValueError("--amqp-ca: needs an amqps:// --amqp-url")
        except ValueError as e:
            raise usage.UsageError(str(e)) from e
        _check_auth(self.config)
        if self.parent is not None:
            _choose_log_observer(self.parent, json=self.config.log_format == "json")


def _choose_log_observer(twistd: Any, *, json: bool) -> None:
    """twistd's one observer (its own lines included), resolved after this
    (``--logger``), writing where twistd's text would (ops/logs.py).

    JSON lines for ``--log-format json``; else twistd's text lines from an
    observer that formats them for a fraction of the CPU, unless ``--syslog``
    or an operator's own ``--logger`` keeps twistd's choice.
    """
    if json:
        observer = "json_observer"
    elif not twistd.get("syslog") and not twistd.get("logger"):
        observer = "text_observer"
    else:
        return
    from .ops import logs

    logs.log_to(twistd.get("logfile"), nodaemon=bool(twistd.get("nodaemon")))
    twistd["logger"] = f"twisted_stow.ops.logs.{observer}"


# A line of twistd's help that starts an option: "  -s, --storage=  ..." or "      --users=".
_OPTION_LINE = re.compile(r"^  (?:-\w,|   ) --([\w-]+)=?\s")

# --help's order (issue 16): where to listen and store first, then by topic.
HELP_GROUPS: list[tuple[str, list[str]]] = [
    ("Where to listen and store", ["listen", "storage"]),
    (
        "Limits",
        [
            "max-body-size",
            "max-part-size",
            "max-parts",
            "memory-budget",
            "max-requests",
            "max-requests-per-peer",
            "min-free-space",
            "idle-timeout",
            "header-timeout",
            "min-body-rate",
            "body-rate-window",
        ],
    ),
    (
        "Conformance",
        [
            "public-url",
            "trust-forwarded-headers",
            "trusted-proxy",
            "forwarded-header",
            "study-mismatch",
            "duplicates",
            "sop-class",
            "transfer-syntax",
            "accept-leading-zero-uids",
            "verify-body-digest",
            "cors-origin",
        ],
    ),
    (
        "Authentication",
        ["users", "tokens", "jwt-key", "jwks", "jwt-audience", "jwt-issuer", "jwt-algorithm"],
    ),
    (
        "Workflows",
        [
            "workflow",
            "default-workflow",
            "workflow-spool",
            "amqp-url",
            "amqp-ca",
            "amqp-exchange",
            "amqp-routing-key",
        ],
    ),
    (
        "Operations",
        ["config", "workers", "metrics-listen", "drain-timeout", "log-format", "version", "help"],
    ),
    ("S3 storage (--storage s3://BUCKET[/PREFIX])", ["s3-endpoint", "s3-region"]),
    ("Cluster", ["index"]),
]

HELP_EXAMPLES = """Examples:
  twistd -n stow --storage /var/lib/dicom
    on 127.0.0.1:8080 only (the default listener: loopback, no authentication)
  twistd -n stow --listen ssl:8443:privateKey=key.pem:certKey=cert.pem \\
    --users users.json --storage /var/lib/dicom
    TLS and HTTP Basic on every interface (SIGHUP reloads users.json and the certificate)
  twistd -n stow --storage s3://bucket/dicom --s3-endpoint http://127.0.0.1:9000
  twistd -n stow --config /etc/twisted-stow/stow.toml
"""

# The options given once per value (their opt_* methods append).
REPEATABLE = {
    "listen",
    "trusted-proxy",
    "cors-origin",
    "sop-class",
    "transfer-syntax",
    "jwt-algorithm",
    "workflow",
    "default-workflow",
}


def _check_auth(config: StowConfig) -> None:
    """Read the authentication files now, so a bad one is a usage error, not a crash."""
    jwt = config.jwt_key_file is not None or config.jwks_file is not None
    if jwt and not (config.jwt_audience and config.jwt_issuer):
        # Without both, a token issued for another service would be accepted here.
        raise usage.UsageError("--jwt-key/--jwks need --jwt-audience and --jwt-issuer")
    if not jwt and (config.jwt_audience or config.jwt_issuer):
        raise usage.UsageError("--jwt-audience/--jwt-issuer need --jwt-key or --jwks")
    try:
        Guard.from_config(config, lambda: 0.0)
    except ValueError as e:
        raise usage.UsageError(str(e)) from e


def _check_s3(config: StowConfig) -> None:
    """Start-up: the bucket exists and the credentials can write, else exit with one line.

    Blocking, before the reactor serves anything (the one S3 call off treq).
    """
    from .site import s3_location
    from .storage.s3client import check_bucket, load_credentials

    assert config.s3 is not None
    credentials = load_credentials(custom_endpoint=config.s3.endpoint is not None)
    problem = check_bucket(s3_location(config.s3), credentials)
    if problem is not None:
        startup.fail(problem)


def _workers(config: StowConfig, reactor: Any) -> int:
    """How many worker processes; one when a ``--listen`` kind cannot be handed over."""
    from .workers import handover

    count = worker_count(config.workers, len(os.sched_getaffinity(0)))
    if count == 1:
        return 1
    for description in config.listen:
        problem = handover.problem(startup.endpoint(reactor, description, "--listen"))
        if problem is None:
            continue
        if config.workers is not None:
            startup.fail(f"--workers {config.workers}: --listen {description}: {problem}")
        startup.log.info(
            "--listen {description}: {problem}: running one process",
            description=description,
            problem=problem,
        )
        return 1
    return count


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """The server: storage, the workflow spool (and its AMQP publisher), plus
    one listening service per ``--listen``."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config: StowConfig = options.config
    if config.s3 is not None:
        _check_s3(config)
    else:
        startup.check_storage(config.storage)
    if config.trust_forwarded_headers and not config.trusted_proxies.networks:
        startup.log.warn(
            "--trust-forwarded-headers without --trusted-proxy believes X-Forwarded-Host/Proto "
            "from any client (deprecated): name the load balancer with --trusted-proxy ADDR"
        )
    if config.index_url is not None:
        from .cluster.wiring import prepare

        problem = prepare(config.index_url)
        if problem is not None:
            startup.fail(problem)
    workers = _workers(config, reactor)
    if workers > 1:
        from .workers.main import make_main_services

        return make_main_services(config, reactor, options.arguments, workers)
    top, site = make_services(config, reactor)
    listeners = []
    reloads: list[Callable[[], bool]] = [site.stow.reload_credentials]
    for description in config.listen:
        endpoint = startup.endpoint(reactor, description, "--listen")
        tls = reload.reloadable(reactor, endpoint, description)
        if tls is not None:
            reloads.append(tls.reload)
        listener = startup.Listener(endpoint, site, "--listen", description)
        listener.setServiceParent(top)
        listeners.append(listener)
        startup.warn_if_exposed(description, authenticated=site.stow.guard is not None)
    if config.metrics_listen is not None:
        startup.Listener(
            startup.endpoint(reactor, config.metrics_listen, "--metrics-listen"),
            startup.metrics_site(),
            "--metrics-listen",
            config.metrics_listen,
        ).setServiceParent(top)

    def stop_listening() -> object:
        return DeferredList([listener.stopService() for listener in listeners])

    # After twistd's own handlers are installed (TWISTED: operations facts).
    reactor.callWhenRunning(site.stow.drain.install, stop_listening)
    reactor.callWhenRunning(reload.install, reactor, reloads)
    return top
