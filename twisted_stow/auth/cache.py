"""Remembered successful password checks, so the KDF runs once per login, not per request.

Keys are an HMAC of user name and password under a key drawn at start-up:
the cache never holds a password, nor a digest that could be attacked
offline.  Entries expire after ``ttl_seconds`` (a changed or removed user
stops working within that time) and the oldest go first past
``max_entries``.  Pure: the clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

DEFAULT_TTL_SECONDS = 300.0
DEFAULT_MAX_ENTRIES = 1024

V = TypeVar("V")


class VerifiedCache(Generic[V]):
    """Successful verifications: HMAC(user, password) → value, bounded and time-limited."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def key(self, user: bytes, password: bytes) -> bytes:
        """The cache key of these credentials (length-prefixed, so no two pairs collide)."""
        message = len(user).to_bytes(4, "big") + user + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: bytes, value: V) -> None:
        self._entries[key] = (self._clock() + self.ttl_seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
