"""In-process dedup backend: a dict with expiry times on an injected clock.

Why not aiocache's SimpleMemoryCache: its TTLs are ``loop.call_later`` timers on the
event loop's real clock, so a fake clock cannot expire an entry (tests would sleep), and
it has no compare-and-set, which complete/release need to act only for the marker's
owner. A dict is atomic here for free: no method awaits, so each runs as one step on the
event loop.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from clawmesh.shared.dedup.base import IN_FLIGHT, Lookup, Notifier, State

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Entries expire lazily on the injected clock; a heap of expiry times lets every
    call purge what has expired, so memory follows the live entries, not the history."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.notifier = Notifier()
        self._entries: dict[str, tuple[bytes, float]] = {}  # hkey -> (value, expires_at)
        self._expiry: list[tuple[float, str]] = []  # (expires_at, hkey); stale rows skipped

    def _purge(self) -> float:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, hkey = heapq.heappop(self._expiry)
            entry = self._entries.get(hkey)
            if entry is not None and entry[1] <= now:
                del self._entries[hkey]
                if entry[0][:1] == IN_FLIGHT:  # an expired lease: its waiters may claim
                    self.notifier.notify(hkey)
        if len(self._expiry) > 2 * len(self._entries) + 1024:  # sliding refreshes left stale rows
            self._expiry = [(exp, key) for key, (_, exp) in self._entries.items()]
            heapq.heapify(self._expiry)
        return now

    def _set(self, hkey: str, value: bytes, expires_at: float) -> None:
        self._entries[hkey] = (value, expires_at)
        heapq.heappush(self._expiry, (expires_at, hkey))

    async def claim(self, hkey: str, marker: bytes, lease_s: float,
                    refresh_ttl_s: float | None) -> Lookup:
        return self._claim(hkey, marker, lease_s, refresh_ttl_s)

    def _claim(self, hkey: str, marker: bytes, lease_s: float, refresh_ttl_s: float | None) -> Lookup:
        now = self._purge()
        entry = self._entries.get(hkey)
        if entry is None:
            self._set(hkey, marker, now + lease_s)
            return Lookup(State.CLAIMED)
        found = Lookup.of(entry[0])
        if refresh_ttl_s is not None and found.state is State.DONE:
            self._set(hkey, entry[0], now + refresh_ttl_s)
        return found

    async def insert_new(self, hkey: str, marker: bytes, lease_s: float) -> Lookup:
        # In process the read costs nothing, and the store may be shared by several
        # Deduplicators (each with its own pre-filter): keep the checked insert.
        return self._claim(hkey, marker, lease_s, None)

    async def complete(self, hkey: str, marker: bytes, reply: bytes, ttl_s: float) -> bool:
        now = self._purge()
        entry = self._entries.get(hkey)
        if entry is not None and entry[0] != marker:
            return False
        self._set(hkey, b"D" + reply, now + ttl_s)
        self.notifier.notify(hkey)
        return True

    async def release(self, hkey: str, marker: bytes) -> bool:
        self._purge()
        entry = self._entries.get(hkey)
        if entry is None or entry[0] != marker:
            return False
        del self._entries[hkey]
        self.notifier.notify(hkey)
        return True

    async def release_many(self, items: list[tuple[str, bytes]]) -> None:
        for hkey, marker in items:
            await self.release(hkey, marker)

    async def count(self) -> int:
        self._purge()
        return len(self._entries)

    async def aclose(self) -> None:
        self._entries.clear()
        self._expiry.clear()
