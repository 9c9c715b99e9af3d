"""UploadSlots: total and per-peer caps, idempotent release."""

from __future__ import annotations

import pytest

from twisted_stow.core.errors import ServiceUnavailable
from twisted_stow.limits import UploadSlots


def test_unlimited_by_default() -> None:
    """Without caps any number of uploads run."""
    slots = UploadSlots()
    for _ in range(100):
        slots.acquire("10.0.0.1")
    assert slots.active == 100


def test_total_cap_refuses_with_retry_after() -> None:
    """Above the total cap: ServiceUnavailable (503) carrying Retry-After."""
    slots = UploadSlots(max_total=2, retry_after_seconds=7)
    slots.acquire("a")
    slots.acquire("b")
    with pytest.raises(ServiceUnavailable) as caught:
        slots.acquire("c")
    assert caught.value.status == 503
    assert caught.value.retry_after_seconds == 7


def test_per_peer_cap_leaves_other_peers_alone() -> None:
    """One busy client is refused while another still gets a slot."""
    slots = UploadSlots(max_per_peer=1)
    slots.acquire("a")
    with pytest.raises(ServiceUnavailable):
        slots.acquire("a")
    slots.acquire("b")
    assert slots.per_peer == {"a": 1, "b": 1}


def test_release_is_idempotent_and_frees_the_slot() -> None:
    """Releasing twice frees one slot once; the peer entry disappears."""
    slots = UploadSlots(max_total=1)
    release = slots.acquire("a")
    release()
    release()
    assert slots.active == 0
    assert slots.per_peer == {}
    slots.acquire("a")
    assert slots.active == 1


def test_a_client_over_its_share_is_told_so_on_a_full_server() -> None:
    """Both caps reached: the refusal names the per-client limit."""
    slots = UploadSlots(max_total=2, max_per_peer=1)
    slots.acquire("10.0.0.1")
    slots.acquire("10.0.0.2")
    with pytest.raises(ServiceUnavailable, match="limit per client"):
        slots.acquire("10.0.0.1")
    with pytest.raises(ServiceUnavailable, match="its limit"):
        slots.acquire("10.0.0.3")
