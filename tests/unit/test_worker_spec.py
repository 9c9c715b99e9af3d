"""The worker spec on the control socketpair, ahead of the AMP traffic (workers/spec.py)."""

from __future__ import annotations

import socket
import struct

import pytest

from twisted_stow.workers.spec import receive_spec, send_spec


def test_the_spec_is_read_exactly_and_what_follows_is_left_for_amp() -> None:
    main_end, worker_end = socket.socketpair()
    with main_end, worker_end:
        spec = {"id": 2, "token": "ab12", "arguments": ["--max-requests", "7", "ü"]}
        send_spec(main_end, spec)
        main_end.sendall(b"\x00\x04_ask")  # the first bytes of an AMP box
        assert receive_spec(worker_end.fileno()) == spec
        assert worker_end.recv(100) == b"\x00\x04_ask"


def test_a_spec_cut_short_or_not_an_object_is_refused() -> None:
    for data in (b"", b"\x00\x00", struct.pack("!I", 10) + b"{}", struct.pack("!I", 2) + b"[]"):
        main_end, worker_end = socket.socketpair()
        with main_end, worker_end:
            main_end.sendall(data)
            main_end.shutdown(socket.SHUT_WR)
            with pytest.raises(ValueError):
                receive_spec(worker_end.fileno())


def test_a_huge_length_is_refused_before_reading() -> None:
    main_end, worker_end = socket.socketpair()
    with main_end, worker_end:
        main_end.sendall(struct.pack("!I", 2**31))
        with pytest.raises(ValueError, match="too large"):
            receive_spec(worker_end.fileno())
