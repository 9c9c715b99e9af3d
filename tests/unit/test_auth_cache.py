"""VerifiedCache: successful password checks remembered, bounded and time-limited."""

from __future__ import annotations

from twisted_stow.auth.cache import VerifiedCache


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire() -> None:
    """A value is returned until its TTL passes, then never again."""
    clock = Clock()
    cache: VerifiedCache[str] = VerifiedCache(clock, ttl_seconds=10)
    key = cache.key(b"alice", b"pw")
    cache.put(key, "alice")
    clock.now = 9.9
    assert cache.get(key) == "alice"
    clock.now = 10.0
    assert cache.get(key) is None
    assert len(cache) == 0


def test_keys_hide_the_password_and_separate_pairs() -> None:
    """Keys are HMACs: no password inside, distinct for (ab, c) and (a, bc), per-process."""
    cache: VerifiedCache[str] = VerifiedCache(Clock())
    key = cache.key(b"alice", b"secret-password")
    assert b"secret-password" not in key and len(key) == 32
    assert cache.key(b"ab", b"c") != cache.key(b"a", b"bc")
    assert VerifiedCache(Clock()).key(b"alice", b"pw") != cache.key(b"alice", b"pw")


def test_bounded() -> None:
    """Past max_entries the oldest entry goes."""
    cache: VerifiedCache[int] = VerifiedCache(Clock(), max_entries=2)
    keys = [cache.key(b"u", str(i).encode()) for i in range(3)]
    for i, key in enumerate(keys):
        cache.put(key, i)
    assert cache.get(keys[0]) is None
    assert cache.get(keys[2]) == 2
