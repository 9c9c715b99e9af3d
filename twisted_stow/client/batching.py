"""Grouping instances into requests: one study per request, bounded in count and bytes.

Pure.  A request holds instances of one study only (so ``URL/studies`` and
``URL/studies/UID`` get the same requests, and a study mismatch concerns a
single instance), at most ``max_instances`` of them and at most
``max_bytes`` of files, except that one file larger than ``max_bytes`` goes
alone.  A request never holds the same SOP Instance UID twice: the answer
names instances by that UID, so each must be unambiguous within its request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .files import Instance

# dcm4che's stowrs sends one request per file unless told; the Python
# dicomweb-client one per call.  100 instances keeps a response small and a
# lost request cheap to re-send, and is still few requests for a CT series.
DEFAULT_MAX_INSTANCES = 100
# Bounds what one failed request re-sends; well above one large instance.
DEFAULT_MAX_REQUEST_BYTES = 512 * 1024 * 1024


@dataclass
class _Open:
    instances: list[Instance] = field(default_factory=list)
    size: int = 0
    uids: set[str] = field(default_factory=set)


class Batcher:
    """Collects instances into requests per study as they are found.

    ``add`` returns the requests it completed (a request is complete when
    the next instance would not fit); ``flush`` returns the rest.  Each
    request is a tuple of instances of one study, in the order added.
    """

    def __init__(
        self,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if max_instances < 1 or max_bytes < 1:
            raise ValueError("max_instances and max_bytes must be at least 1")
        self.max_instances = max_instances
        self.max_bytes = max_bytes
        self._open: dict[str, _Open] = {}

    def add(self, instance: Instance) -> list[tuple[Instance, ...]]:
        """Add ``instance``; return the requests that are now complete (0 or 1)."""
        ready: list[tuple[Instance, ...]] = []
        group = self._open.setdefault(instance.study_instance_uid, _Open())
        if group.instances and not self._fits(group, instance):
            ready.append(tuple(group.instances))
            group = self._open[instance.study_instance_uid] = _Open()
        group.instances.append(instance)
        group.size += instance.size
        group.uids.add(instance.sop_instance_uid)
        if len(group.instances) >= self.max_instances or group.size >= self.max_bytes:
            ready.append(tuple(group.instances))
            del self._open[instance.study_instance_uid]
        return ready

    def flush(self) -> list[tuple[Instance, ...]]:
        """The requests still open, one per study; the batcher is empty afterwards."""
        ready = [tuple(group.instances) for group in self._open.values() if group.instances]
        self._open.clear()
        return ready

    def _fits(self, group: _Open, instance: Instance) -> bool:
        return (
            group.size + instance.size <= self.max_bytes
            and instance.sop_instance_uid not in group.uids
        )


def group(
    instances: Iterable[Instance],
    max_instances: int = DEFAULT_MAX_INSTANCES,
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> list[tuple[Instance, ...]]:
    """All of ``instances`` grouped at once (``Batcher.add`` for each, then ``flush``)."""
    batcher = Batcher(max_instances, max_bytes)
    requests = [request for instance in instances for request in batcher.add(instance)]
    return requests + batcher.flush()
