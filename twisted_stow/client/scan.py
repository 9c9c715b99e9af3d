"""The scan: files examined in a thread, a few dozen at a time, fed to the uploader.

Twisted edge.  Examining a file (stat, the header read) blocks, so it runs
in the reactor's thread pool while the reactor sends; everything it finds
is counted and grouped back on the reactor thread, so no state is shared
with the thread but the file iterator, which only one thread call at a time
advances.  The scan waits while enough requests are queued: a folder of
50,000 files is never held as 50,000 instances in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from .batching import Batcher
from .files import FileKey, Found, Instance, Journaled, Skipped, examine_some, walk
from .report import Line, Outcome, Report
from .runner import Uploader
from .summary import Tally

# Files per thread call: enough that the hop costs nothing, few enough that
# the first request starts soon.
SCAN_CHUNK_FILES = 64
# Requests queued beyond those in flight, per unit of --concurrency.
QUEUED_REQUESTS_PER_SLOT = 2


async def scan(
    paths: Iterable[str | Path],
    journaled: dict[FileKey, str],
    uploader: Uploader,
    tally: Tally,
    report: Report,
) -> None:
    """Examine every file of ``paths`` and hand the requests to ``uploader``.

    Ends with ``uploader.finish_adding()``, early when the uploader stopped.
    """
    settings = uploader.settings
    batcher = Batcher(settings.max_instances, settings.max_bytes)
    files = walk(paths)
    bound = settings.concurrency * QUEUED_REQUESTS_PER_SLOT
    room: Deferred[None] | None = None

    def wake() -> None:
        nonlocal room
        if room is not None and uploader.queued < bound:
            waiting, room = room, None
            waiting.callback(None)

    uploader.on_queue_room = wake
    try:
        exhausted = False
        while not exhausted and uploader.fatal is None:
            if uploader.queued >= bound:
                room = Deferred()
                await room
                continue
            found, exhausted = await deferToThread(examine_some, files, journaled, SCAN_CHUNK_FILES)
            for item in found:
                for request in _count(item, batcher, tally, report):
                    uploader.add(request)
        for request in batcher.flush():
            uploader.add(request)
    finally:
        uploader.finish_adding()


def _count(
    item: Found, batcher: Batcher, tally: Tally, report: Report
) -> list[tuple[Instance, ...]]:
    if isinstance(item, Skipped):
        tally.skipped[item.reason] += 1
        text = item.reason.value + (f": {item.detail}" if item.detail else "")
        report.write(Line(item.path, None, Outcome.SKIPPED, None, text))
        return []
    tally.found += 1
    tally.found_bytes += item.key.size
    if isinstance(item, Journaled):
        tally.already_stored += 1
        tally.already_stored_bytes += item.key.size
        report.write(
            Line(
                Path(item.key.path),
                item.sop_instance_uid,
                Outcome.ALREADY_STORED,
                None,
                "in the journal",
            )
        )
        return []
    return batcher.add(item)
