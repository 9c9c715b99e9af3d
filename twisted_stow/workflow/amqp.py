"""``AmqpPublisher``: publishes spooled workflow requests to RabbitMQ.

The spool is the outbox (``SpoolOutbox``), or with ``--index`` the shared
PostgreSQL outbox table (``cluster.outbox``): both are an ``Outbox``, which
hands out pending requests and removes them once confirmed.  The publisher
connects with pika's Twisted adapter, declares the exchange (topic, durable:
a fresh broker works), turns on publisher confirms and publishes every
request as a persistent message whose ``message_id`` is the request's stable
``payload_id``.  A request is removed only after the broker confirmed it, so
a broker that is down, restarts or drops the connection mid-batch costs a
delay, never a request: requests not confirmed stay in the outbox and are
published again after reconnecting (at least once; consumers drop repeats by
``message_id``).

While the broker is unreachable the publisher retries with exponential
backoff, from ``RETRY_MIN_SECONDS`` up to ``RETRY_MAX_SECONDS``.

``amqps://`` connects with TLS (Twisted's, not pika's: pika's Twisted adapter
takes the transport it is given) and verifies the broker's certificate
against ``--amqp-ca`` or the system's trust store, and its name (or IP
address) against the URL's host; a broker that fails either is not
connected, and the log line says why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pika
from OpenSSL.SSL import Error as TLSError
from pika.adapters.twisted_connection import TwistedProtocolConnection
from pika.exceptions import UnroutableError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger

from ..deferreds import RunInThread
from ..ops import metrics
from .request import decode
from .spool import Spool

log = Logger()

# First retry after half a second; doubling up to 5 s keeps a restarted
# broker's backlog waiting at most that long once it answers again.
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
# Messages published before waiting for their confirms: enough to hide the
# round trip (and the broker's fsync batching), small enough to re-send
# cheaply after a dropped connection.
BATCH_MESSAGES = 64
# Rescan the spool this often even without news: entries written by another
# server sharing the spool, or left after a failed removal.
RESCAN_SECONDS = 5.0
# TCP connect, and then the AMQP handshake, each get this long: a broker that
# accepts connections while it is still booting may never answer.
CONNECT_TIMEOUT_SECONDS = 10.0
# After a polite AMQP close, the TCP connection is aborted if still open.
CLOSE_GRACE_SECONDS = 2.0
# A request the broker returned (no queue bound to the exchange and routing
# key) stays in the spool and is published again this much later.
UNROUTABLE_RETRY_SECONDS = 5.0
MESSAGE_TYPE = "WorkflowRequestEvent"
APP_ID = "twisted-stow"


def check_amqp_url(url: str, ca_file: Path | None = None) -> None:
    """Raise ``ValueError`` unless ``url`` is an ``amqp://`` or ``amqps://`` URL pika
    accepts, and ``ca_file`` (``--amqp-ca``, amqps only) holds PEM certificates."""
    scheme = url.partition(":")[0].lower()
    if scheme not in ("amqp", "amqps"):
        raise ValueError(f"{url!r} is not an amqp:// or amqps:// URL")
    try:
        parameters = pika.URLParameters(url)
    except Exception as e:
        raise ValueError(f"{url!r} is not a valid AMQP URL: {e}") from e
    if ca_file is not None:
        if scheme != "amqps":
            raise ValueError("--amqp-ca: needs an amqps:// --amqp-url")
        tls_options(parameters.host, ca_file)


def tls_options(host: str, ca_file: Path | None) -> Any:
    """Client TLS for ``host``: the broker's certificate chains to ``ca_file``'s
    certificates (None: the system's trust store) and names ``host``."""
    if ca_file is None:
        return optionsForClientTLS(host, trustRoot=platformTrust())
    try:
        pem = ca_file.read_bytes()
    except OSError as e:
        raise ValueError(f"--amqp-ca: cannot read {str(ca_file)!r}: {e.strerror}") from None
    blocks = [
        block + b"-----END CERTIFICATE-----\n"
        for block in pem.split(b"-----END CERTIFICATE-----")
        if b"-----BEGIN CERTIFICATE-----" in block
    ]
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception:
        certificates = []
    if not certificates or len(certificates) != len(blocks):
        raise ValueError(f"--amqp-ca: {str(ca_file)!r} holds no PEM certificate")
    return optionsForClientTLS(host, trustRoot=trustRootFromCertificates(certificates))


@dataclass(frozen=True, slots=True)
class Pending:
    """One workflow request waiting for its broker confirm; ``key`` is the outbox's own."""

    key: Any
    body: bytes
    payload_id: str
    correlation_id: str | None


class Outbox(Protocol):
    """Where workflow requests wait until the broker confirmed them."""

    # Named in the publisher's log lines ("workflow requests wait in ...").
    description: str

    def take(self, limit: int) -> Deferred[list[Pending]]:
        """Up to ``limit`` requests to publish now, oldest first."""

    def delivered(self, keys: list[Any]) -> Deferred[Any]:
        """The broker confirmed these: remove them durably."""


class SpoolOutbox:
    """The local spool as the outbox: its files, read and removed in a thread."""

    def __init__(self, spool: Spool, run_in_thread: RunInThread) -> None:
        self.spool = spool
        self.description = str(spool.directory)
        self._run_in_thread = run_in_thread

    def take(self, limit: int) -> Deferred[list[Pending]]:
        return self._run_in_thread(_take_entries, self.spool, limit)

    def delivered(self, keys: list[Any]) -> Deferred[Any]:
        return self._run_in_thread(self.spool.remove, keys)


class AmqpPublisher(Service):
    """Drains an outbox to an AMQP exchange; start and stop with the application."""

    def __init__(
        self,
        outbox: Spool | Outbox,
        url: str,
        *,
        exchange: str,
        routing_key: str,
        reactor: Any,
        run_in_thread: RunInThread,
        retry_min_seconds: float = RETRY_MIN_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        ca_file: Path | None = None,
    ) -> None:
        if isinstance(outbox, Spool):
            outbox = SpoolOutbox(outbox, run_in_thread)
        self.outbox: Outbox = outbox
        self.spool = outbox.spool if isinstance(outbox, SpoolOutbox) else None
        self._parameters = pika.URLParameters(url)
        # amqps://: TLS options built once (the CA file is read at start-up).
        self._tls = (
            tls_options(self._parameters.host, ca_file)
            if url.lower().startswith("amqps:")
            else None
        )
        self.exchange = exchange
        self.routing_key = routing_key
        self._reactor = reactor
        self._run_in_thread = run_in_thread
        self._retry_min = retry_min_seconds
        self._retry_max = retry_max_seconds
        self._running = False
        self._loop: Deferred[None] | None = None
        self._waiting: Deferred[None] | None = None
        self._sleeping: Deferred[None] | None = None
        self._connection: Any = None
        self._connecting: Deferred[Any] | None = None
        self._news = False
        # Whether the last attempt reached the broker (logs once per outage).
        self.connected = False
        self.published = 0

    # Lifecycle.

    def startService(self) -> None:
        super().startService()
        self._running = True
        self._loop = ensureDeferred(self._run())

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._running = False
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._drop(self._connection)
        self.wake()
        sleeping, self._sleeping = self._sleeping, None
        if sleeping is not None and not sleeping.called:
            sleeping.callback(None)
        return self._loop

    def wake(self) -> None:
        """A new request is in the outbox (called by ``WorkflowTrigger``)."""
        self._news = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    # The loop.

    async def _run(self) -> None:
        delay = self._retry_min
        while self._running:
            try:
                await self._session()
            except Exception as error:
                if not self._running:
                    break
                if self.connected:
                    # It worked until now: retry soon, then back off again.
                    delay = self._retry_min
                    self.connected = False
                log.warn(
                    "AMQP broker unavailable ({error}); workflow requests wait in {spool}, "
                    "retry in {delay} s",
                    error=_describe(error),
                    spool=self.outbox.description,
                    delay=delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self._retry_max)
        self._connection = None

    async def _session(self) -> None:
        """Connect, then publish until stopped; raises when the connection fails."""
        endpoint: Any = HostnameEndpoint(
            self._reactor,
            self._parameters.host,
            self._parameters.port,
            timeout=CONNECT_TIMEOUT_SECONDS,
        )
        if self._tls is not None:
            endpoint = wrapClientTLS(self._tls, endpoint)
        protocol = _Connection(self._parameters, custom_reactor=self._reactor)
        self._connecting = connectProtocol(endpoint, protocol)
        try:
            await self._connecting
        finally:
            self._connecting = None
        self._connection = protocol
        try:
            ready = protocol.ready
            if ready is not None:  # None: the handshake is over already
                ready.addTimeout(CONNECT_TIMEOUT_SECONDS, self._reactor)
                try:
                    await ready
                except Exception:
                    # pika reports a failed TLS handshake as a lost
                    # connection ("AMQPConnectionError: 1"): name the cause.
                    if isinstance(protocol.lost_reason, TLSError):
                        raise protocol.lost_reason from None
                    raise
            channel = await protocol.channel()
            await channel.exchange_declare(
                exchange=self.exchange, exchange_type="topic", durable=True
            )
            await channel.confirm_delivery()
            # A closed channel (broker gone, connection lost) ends the idle wait.
            channel.on_closed.addBoth(lambda _: self.wake())
            self.connected = True
            metrics.AMQP_CONNECTED.set(1)
            log.info(
                "AMQP publisher connected to {host}:{port}{tls}, exchange {exchange}",
                host=self._parameters.host,
                port=self._parameters.port,
                tls=" (TLS, certificate verified)" if self._tls is not None else "",
                exchange=self.exchange,
            )
            while self._running:
                if channel.is_closed or protocol.is_closed:
                    raise ConnectionError("the AMQP channel closed")
                self._news = False
                try:
                    entries = await self.outbox.take(BATCH_MESSAGES)
                except OSError as error:
                    # The outbox itself is down (the index database): keep the
                    # broker connection and look again later.
                    log.warn(
                        "workflow outbox {outbox} unavailable ({error}); retry in {delay} s",
                        outbox=self.outbox.description,
                        error=getattr(error, "detail", None) or _describe(error),
                        delay=self._retry_max,
                    )
                    await self._sleep(self._retry_max)
                    continue
                if not entries:
                    await self._idle(channel)
                    continue
                if await self._publish_batch(channel, entries):
                    await self._sleep(UNROUTABLE_RETRY_SECONDS)
        finally:
            metrics.AMQP_CONNECTED.set(0)
            self._connection = None
            self._drop(protocol)

    def _drop(self, protocol: Any) -> None:
        """Close politely; abort the TCP connection if that does not end it."""
        if not protocol.is_closed:
            with contextlib.suppress(Exception):
                protocol.close()
        transport = protocol.transport

        def abort() -> None:
            if getattr(transport, "connected", False):
                transport.abortConnection()

        if transport is not None:
            self._reactor.callLater(CLOSE_GRACE_SECONDS, abort)

    async def _publish_batch(self, channel: Any, entries: Sequence[Pending]) -> bool:
        """Publish ``entries``, await their confirms, remove the confirmed ones.

        True when the broker returned some as unroutable (they stay in the outbox).
        """
        publishes: list[Deferred[Any]] = []
        sent: list[Any] = []
        for entry in entries:
            body = entry.body
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,  # persistent: survives a broker restart in a durable queue
                message_id=entry.payload_id,
                correlation_id=entry.correlation_id,
                timestamp=int(time.time()),
                type=MESSAGE_TYPE,
                app_id=APP_ID,
            )
            publishes.append(
                channel.basic_publish(
                    exchange=self.exchange,
                    routing_key=self.routing_key,
                    body=body,
                    properties=properties,
                    # Returned (UnroutableError) when no queue is bound, rather
                    # than confirmed and lost: the request stays in the spool.
                    mandatory=True,
                )
            )
            sent.append(entry.key)
        results = await DeferredList(publishes, consumeErrors=True)
        confirmed = [key for (ok, _), key in zip(results, sent, strict=True) if ok]
        if confirmed:
            await self.outbox.delivered(confirmed)
            self.published += len(confirmed)
            metrics.AMQP_PUBLISHED.inc(len(confirmed))
            log.debug("published {count} workflow requests", count=len(confirmed))
        failures = [value for ok, value in results if not ok]
        metrics.AMQP_FAILED.inc(len(failures))
        returned = [f for f in failures if f.check(UnroutableError)]
        if returned:
            log.warn(
                "{count} workflow requests returned unroutable by exchange {exchange!r} with "
                "routing key {routing_key!r} (no queue bound): kept in the spool, retried in "
                "{retry:g} s",
                count=len(returned),
                exchange=self.exchange,
                routing_key=self.routing_key,
                retry=UNROUTABLE_RETRY_SECONDS,
                stow_event="workflow.unroutable",
            )
        lost = [f for f in failures if not f.check(UnroutableError)]
        if lost:
            # Nacked, or the channel closed: reconnect and send the rest again.
            lost[0].raiseException()
        return bool(returned)

    async def _idle(self, channel: Any) -> None:
        """Wait for a new entry, the rescan interval, or the channel closing."""
        if self._news or not self._running:
            return
        waiting: Deferred[None] = Deferred()
        self._waiting = waiting
        timer = self._reactor.callLater(RESCAN_SECONDS, self.wake)
        try:
            await waiting
        finally:
            if timer.active():
                timer.cancel()

    async def _sleep(self, seconds: float) -> None:
        """Back off; only ``stopService`` ends the wait early (new entries do
        not: while the broker is down they just wait in the spool)."""
        sleeping: Deferred[None] = Deferred()
        self._sleeping = sleeping

        def wake_up() -> None:
            if not sleeping.called:
                sleeping.callback(None)

        timer = self._reactor.callLater(seconds, wake_up)
        try:
            await sleeping
        finally:
            self._sleeping = None
            if timer.active():
                timer.cancel()


def _take_entries(spool: Spool, limit: int) -> list[Pending]:
    """Blocking: the oldest ``limit`` complete entries of ``spool``, read and checked."""
    return [
        Pending(entry, body, message["payload_id"], message.get("correlation_id"))
        for entry, body, message in _load_entries(spool, spool.pending()[:limit])
    ]


def _load_entries(spool: Spool, entries: list[Path]) -> list[tuple[Path, bytes, dict[str, Any]]]:
    """Blocking: read and check each entry; set aside one that is not a request.

    An entry that cannot be parsed was not written by us (ours are written
    atomically): it is renamed to a dot-file, which the spool skips, and
    logged, rather than blocking the outbox forever.
    """
    loaded: list[tuple[Path, bytes, dict[str, Any]]] = []
    for entry in entries:
        try:
            body = spool.read(entry)
        except FileNotFoundError:
            continue  # delivered by another server sharing the spool
        try:
            message = decode(body)
        except ValueError:
            aside = entry.with_name(f".unreadable-{entry.name}")
            with contextlib.suppress(OSError):
                entry.rename(aside)
            log.error("workflow spool entry {entry} is not a workflow request", entry=str(entry))
            continue
        loaded.append((entry, body, message))
    return loaded


class _Connection(TwistedProtocolConnection):
    """pika's protocol, keeping why its connection was lost (a TLS error, say)."""

    lost_reason: BaseException | None = None

    def connectionLost(self, reason: Any) -> None:
        self.lost_reason = reason.value
        super().connectionLost(reason)


def _describe(error: BaseException) -> str:
    if isinstance(error, TLSError):
        # pyOpenSSL's text is a list of tuples; say what it means first.
        return f"TLS handshake failed, broker certificate not verified ({error})"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
