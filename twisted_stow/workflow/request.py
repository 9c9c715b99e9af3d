"""Build the workflow request of one POST from its outcomes (pure).

The MONAI Informatics Gateway publishes a ``WorkflowRequestEvent`` for each
POST on its ``/dicomweb/`` routes (docs/WORKFLOW.md); this module builds
our equivalent as a JSON-ready dict, using MONAI's snake_case field names
where they mean the same thing (``payload_id``, ``workflows``,
``file_count``, ``correlation_id``, ``timestamp``, ``data_trigger``,
``payload``).  docs/WORKFLOW.md documents every field with an example.

No clock, no randomness, no I/O: the caller passes the ids and the time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..core.config import is_object_store
from ..core.outcomes import InstanceRef, Outcome, Stored

# Bumped when a field changes meaning or disappears (adding one does not).
SCHEMA_VERSION = 1
# MONAI's DataService value for requests that arrived over DICOMweb STOW-RS.
DATA_SERVICE = "DicomWeb"


@dataclass(frozen=True, slots=True)
class WorkflowContext:
    """What the request knew besides its outcomes.

    ``endpoint`` is the request path as received (no query); ``peer`` the
    client's address; ``principal`` who authenticated, or None;
    ``storage_root`` the absolute directory, or ``s3://BUCKET/PREFIX``, that
    ``path`` fields are relative to (our analogue of MONAI's ``bucket``; with
    S3 each entry also has ``uri``, ``s3://BUCKET/KEY``).
    """

    payload_id: str
    correlation_id: str
    workflows: Sequence[str]
    endpoint: str
    peer: str
    principal: str | None
    storage_root: str
    timestamp: datetime


def instance_relative_path(instance: InstanceRef) -> str:
    """Where the filesystem storage keeps ``instance``, relative to its root.

    The layout ``<Study>/<Series>/<SOP>.dcm`` of storage/filesystem.py; UIDs
    hold only digits and dots, so they are safe path segments.
    """
    return (
        f"{instance.study_instance_uid}/{instance.series_instance_uid}/"
        f"{instance.sop_instance_uid}.dcm"
    )


def _instance_entry(outcome: Stored, storage_root: str) -> dict[str, Any]:
    instance = outcome.instance
    entry: dict[str, Any] = {
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "sop_instance_uid": instance.sop_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "path": instance_relative_path(instance),
        "size": outcome.size_bytes,
        # Hex SHA-256 of the stored file (None if a backend reports none).
        "sha256": outcome.sha256,
    }
    if is_object_store(storage_root):
        # An object store: each object by its full name, s3://BUCKET/KEY.
        entry["uri"] = f"{storage_root}/{entry['path']}"
    return entry


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-11-22T19:40:01.123456Z``."""
    if moment.tzinfo is None:
        raise ValueError("the timestamp must be timezone-aware")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_workflow_request(
    outcomes: Sequence[Outcome], context: WorkflowContext
) -> dict[str, Any] | None:
    """The workflow request for a POST with ``outcomes``, or None.

    None when no instance was stored: such a POST triggers nothing.  Failed
    instances are left out; an instance sent twice in one POST (same SOP
    Instance UID, stored twice with identical bytes) is listed once.
    """
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for outcome in outcomes:
        if not isinstance(outcome, Stored):
            continue
        uid = outcome.instance.sop_instance_uid
        if uid in seen:
            continue
        seen.add(uid)
        entries.append(_instance_entry(outcome, context.storage_root))
    if not entries:
        return None
    sizes = [entry["size"] for entry in entries]
    return {
        "schema_version": SCHEMA_VERSION,
        "payload_id": context.payload_id,
        "correlation_id": context.correlation_id,
        "workflows": list(context.workflows),
        "file_count": len(entries),
        # None if a storage backend did not report sizes (never for files).
        "total_bytes": sum(sizes) if None not in sizes else None,
        "timestamp": format_timestamp(context.timestamp),
        "data_trigger": {
            "data_service": DATA_SERVICE,
            "source": context.peer,
            "destination": context.endpoint,
        },
        "endpoint": context.endpoint,
        "peer": context.peer,
        "principal": context.principal,
        "storage_root": context.storage_root,
        "payload": entries,
    }


def encode(workflow_request: dict[str, Any]) -> bytes:
    """The request as UTF-8 JSON, keys in a fixed order, newline-terminated."""
    return json.dumps(workflow_request, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def decode(data: bytes) -> dict[str, Any]:
    """Parse a spooled request; raises ``ValueError`` if it is not one."""
    value = json.loads(data)
    if not isinstance(value, dict) or not isinstance(value.get("payload_id"), str):
        raise ValueError("not a workflow request (no payload_id)")
    return value
