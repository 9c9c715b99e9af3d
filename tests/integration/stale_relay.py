"""A loopback TCP relay that makes kept-alive connections go stale, as a store does.

A store closes an idle keep-alive connection when it likes; a request sent
on it just then fails before any answer (``RequestTransmissionFailed``,
``ResponseNeverReceived``).  SeaweedFS cannot be made to do that on demand,
so this relay sits between the server and it, byte for byte (no HTTP of its
own: SigV4 signs what the server sent), and sabotages the first attempt of
each request ``selects`` picks by its request line (a retry, the same line,
goes through), so which requests fail does not depend on which connection
the client's pool happened to reuse:

- ``"reset"``: the connection is reset as the request arrives, before a byte
  reaches the store (the store had closed it);
- ``"lose-answer"``: the request goes to the store, which acts on it, and
  the connection is reset instead of relaying the answer (the store closed it
  after it acted, before it answered): a retry then meets its own effect.

``sabotaged`` lists the request lines it sabotaged and whether each came on
a kept-alive connection (not its first request).  ``selects`` picks nothing
until the test sets it (the server's start-up check goes through).  Threads,
one pair per connection; everything on 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

READ_BYTES = 256 * 1024
MODES = ("reset", "lose-answer")


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0), as a peer that dropped the connection.

    ``shutdown(SHUT_RD)`` first: a close alone does not end a ``recv`` another
    thread is blocked in, and the kernel keeps the socket (and sends nothing)
    until it ends.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


class StaleConnectionRelay:
    def __init__(
        self,
        upstream_port: int,
        mode: str,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.upstream_port = upstream_port
        self.mode = mode
        self.selects: Callable[[bytes], bool] = lambda line: False
        self.sabotaged: list[tuple[bytes, bool]] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                _reset(client)
                continue
            _Connection(self, client, upstream).start()

    def sabotages(self, line: bytes, reused: bool) -> bool:
        """Whether this request is to fail (its first attempt, if selected)."""
        with self._lock:
            if not self.selects(line) or any(line == seen for seen, _ in self.sabotaged):
                return False
            self.sabotaged.append((line, reused))
            return True

    def close(self) -> None:
        self._listener.close()


class _Connection:
    """One client connection and its upstream twin."""

    def __init__(
        self, relay: StaleConnectionRelay, client: socket.socket, upstream: socket.socket
    ) -> None:
        self.relay = relay
        self.client = client
        self.upstream = upstream
        self.requests = 0
        # Between requests: the last bytes relayed were an answer's (HTTP/1.1
        # without pipelining: the next client bytes begin a request).
        self.between = True
        self.lose_answer = False
        self.lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._requests, daemon=True).start()
        threading.Thread(target=self._answers, daemon=True).start()

    def _end(self) -> None:
        with self.lock:
            _reset(self.client)
            self.upstream.close()

    def _requests(self) -> None:
        while True:
            try:
                data = self.client.recv(READ_BYTES)
            except OSError:
                data = b""
            if not data:
                self._end()
                return
            with self.lock:
                starts = self.between
                self.between = False
            if starts:
                self.requests += 1
                line = data.split(b"\r\n", 1)[0]
                if self.relay.sabotages(line, reused=self.requests > 1):
                    if self.relay.mode == "reset":
                        self._end()
                        return
                    self.lose_answer = True
            try:
                self.upstream.sendall(data)
            except OSError:
                self._end()
                return

    def _answers(self) -> None:
        while True:
            try:
                data = self.upstream.recv(READ_BYTES)
            except OSError:
                data = b""
            if not data or self.lose_answer:
                self._end()
                return
            with self.lock:
                # Before the bytes go: the client may send its next request
                # the moment it has them.
                self.between = True
            try:
                self.client.sendall(data)
            except OSError:
                self._end()
                return
