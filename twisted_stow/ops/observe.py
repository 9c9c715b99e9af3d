"""The small calls the request path makes into metrics and the structured log.

Each is called from one seam (``StreamingRequest.finish``/``connectionLost``,
``StowChannel.answer_and_close``, ``Ingest``'s part outcome) and costs a few
counter updates and at most one log event; none looks at body bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ..core.errors import StowError
from ..core.outcomes import Failed, Outcome, Stored
from ..deferreds import detached
from . import metrics
from .health import HEALTH_PATHS

log = Logger(namespace="twisted_stow.ops")

# The route family label of requests that are not STOW uploads.
OPS_FAMILY = "ops"
OTHER_FAMILY = "other"
# A raw answer (from the headers, or HTTP framing): the route may be unknown.
UNKNOWN_FAMILY = "none"


def _text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _peer(request: Any) -> str:
    """The client's address, from ``request``'s connection (``None`` once it is gone)."""
    transport = request.channel.transport if request.channel else None
    peer = getattr(transport, "getPeer", lambda: None)()
    return str(getattr(peer, "host", peer))


def _family(request: Any) -> str:
    upload = getattr(request, "upload", None)
    if upload is not None:
        return str(upload.target.route_family)
    path = _text(getattr(request, "path", b"")).split("?", 1)[0]
    return OPS_FAMILY if path in HEALTH_PATHS else OTHER_FAMILY


def request_finished(request: Any) -> None:
    """twisted.web answered ``request`` (Klein route or error handler)."""
    seconds = request.stow.reactor.seconds() - request.stow_started
    family = _family(request)
    status = int(request.code)
    metrics.request_answered(family, status, seconds)
    upload = request.upload
    stored = failed = 0
    if upload is not None:
        metrics.BODY_BYTES.observe(request.body_bytes)
        # The result fired before the route answered (it awaited it).
        result = getattr(upload.result, "result", None)
        for outcome in getattr(result, "outcomes", ()):
            if isinstance(outcome, Stored):
                stored += 1
            else:
                failed += 1
    if family == OPS_FAMILY and status == 200:
        return  # a probe every second: counted, not logged
    log.info(
        "{method} {path} {status} in {duration:.3f} s: {stored} stored, {failed} failed",
        stow_event="request.done",
        method=_text(request.method),
        path=_text(request.path),
        family=family,
        status=status,
        peer=_peer(request),
        principal=getattr(upload, "principal", None),
        correlation_id=_text(request.responseHeaders.getRawHeaders(b"x-correlation-id", [b""])[0])
        or None,
        bytes=request.body_bytes,
        stored=stored,
        failed=failed,
        duration=seconds,
    )


def raw_answer(error: StowError) -> None:
    """``StowChannel.answer_and_close`` wrote ``error``: count it."""
    metrics.refused(error)
    metrics.REQUESTS.labels(UNKNOWN_FAMILY, str(error.status)).inc()


def disconnected(request: Any) -> None:
    """The client went away mid-upload: log what was kept and what was dropped."""
    upload = request.upload
    peer = _peer(request)

    def report(result: Any) -> None:
        outcomes = getattr(result, "outcomes", [])
        kept = [o.instance.sop_instance_uid for o in outcomes if isinstance(o, Stored)]
        log.warn(
            "client {peer} disconnected mid-upload after {bytes} bytes: {kept} instances "
            "kept, the part in flight dropped",
            stow_event="request.disconnected",
            peer=peer,
            bytes=request.body_bytes,
            kept=len(kept),
            stored_uids=" ".join(kept),
        )

    detached(upload.ingest.close()).addBoth(report)


def outcome_known(outcome: Outcome) -> None:
    """One part has its outcome: count it, and one log line."""
    metrics.outcome_known(outcome)
    if isinstance(outcome, Stored):
        ref = outcome.instance
        log.info(
            "part {part}: stored {sop_instance_uid} ({size} bytes, sha256 {sha256}){warning}",
            stow_event="instance.stored",
            part=outcome.part,
            sop_instance_uid=ref.sop_instance_uid,
            sop_class_uid=ref.sop_class_uid,
            study_instance_uid=ref.study_instance_uid,
            series_instance_uid=ref.series_instance_uid,
            size=outcome.size_bytes,
            sha256=outcome.sha256 or "-",
            reason=f"{outcome.warning:#06x}" if outcome.warning is not None else None,
            warning=f", warning {outcome.warning.name}: {outcome.detail}"
            if outcome.warning is not None
            else "",
        )
    elif isinstance(outcome, Failed):
        log.info(
            "{where}: failed {sop_instance_uid}: {reason} {reason_name}: {detail}",
            stow_event="instance.failed",
            where=f"part {outcome.part}" if outcome.part is not None else "request body",
            part=outcome.part,
            sop_instance_uid=outcome.sop_instance_uid,
            sop_class_uid=outcome.sop_class_uid,
            reason=f"{outcome.reason:#06x}",
            reason_name=outcome.reason.name,
            detail=outcome.detail,
        )
