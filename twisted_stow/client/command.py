"""``stow-upload URL PATH...``: the console script, on ``twisted.internet.task.react``.

Wiring only: the settings from argv, an Agent (a persistent pool of
``--concurrency`` connections, TLS trusting ``--cacert``), the journal, the
report, the progress display, then the scan and the uploader; at the end
the summary on stdout and the exit status (docs/UPLOAD.md).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.internet.task import react
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from .journal import Journal
from .options import Settings, UsageError, settings_from
from .progress import progress_for
from .report import Report
from .runner import Uploader
from .scan import scan
from .summary import EXIT_NOTHING_SENT, Tally, exit_status, render_summary

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def tls_policy(cacert: Path | None) -> BrowserLikePolicyForHTTPS:
    """Verify servers against ``cacert``'s certificates, or the platform's trust store."""
    if cacert is None:
        return BrowserLikePolicyForHTTPS()
    try:
        pem = cacert.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {cacert}: {error.strerror}") from None
    certificates = [Certificate.loadPEM(block) for block in _PEM_CERTIFICATE.findall(pem)]
    if not certificates:
        raise UsageError(f"{cacert} holds no PEM certificate")
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))


async def upload(reactor: Any, settings: Settings, out: IO[str], err: IO[str]) -> int:
    """One run: returns the exit status after printing the summary to ``out``."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.concurrency
    # Our own retries decide what is sent again; the pool must not re-send.
    pool.retryAutomatically = False
    agent = Agent(reactor, contextFactory=tls_policy(settings.cacert), pool=pool)
    try:
        journal = Journal(settings.journal) if settings.journal is not None else None
        report = Report(settings.report)
    except OSError as error:
        raise UsageError(f"cannot open {error.filename}: {error.strerror}") from None
    tally = Tally()
    uploader = Uploader(settings, HTTPClient(agent), reactor, tally, report, journal)
    progress = progress_for(
        reactor, tally, lambda: uploader.inflight_bytes, quiet=settings.quiet, out=err
    )
    started = reactor.seconds()
    progress.start()
    try:
        await scan(settings.paths, journal.done if journal else {}, uploader, tally, report)
        await uploader.done
    finally:
        progress.stop()
        if journal is not None:
            journal.close()
        report.close()
        await pool.closeCachedConnections()
    if uploader.fatal is not None:
        err.write(f"stow-upload: {uploader.fatal}\n")
    out.write(render_summary(tally, reactor.seconds() - started) + "\n")
    out.flush()
    return exit_status(tally, uploader.fatal)


def _run(reactor: Any, settings: Settings) -> Any:
    async def run() -> None:
        try:
            status = await upload(reactor, settings, sys.stdout, sys.stderr)
        except UsageError as error:
            sys.stderr.write(f"stow-upload: {error}\n")
            status = EXIT_NOTHING_SENT
        raise SystemExit(status)

    return ensureDeferred(run())


def main(argv: Sequence[str] | None = None) -> None:
    """The ``stow-upload`` console script; exits with the run's status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        settings = settings_from(arguments, os.environ, read_stdin=sys.stdin.read)
    except UsageError as error:
        sys.stderr.write(f"stow-upload: {error}\n")
        raise SystemExit(EXIT_NOTHING_SENT) from None
    react(_run, [settings])


if __name__ == "__main__":
    main()
