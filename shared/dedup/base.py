"""What a dedup backend is: an atomic store of in-flight markers and stored replies.

Values are bytes: ``b"I" + token`` while the original is in flight (the token names the
owner, so only it can complete or release), ``b"D" + reply`` once it finished. Keys are
already hashed by the Deduplicator.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import NamedTuple, Protocol

__all__ = ["Backend", "BackendError", "Lookup", "Notifier", "State"]

IN_FLIGHT = b"I"
DONE = b"D"


class BackendError(Exception):
    """The backend could not be asked (connection refused, reset, protocol error…)."""


class State(Enum):
    CLAIMED = "claimed"  # this caller now owns the key
    IN_FLIGHT = "in_flight"  # someone else owns it and has not finished
    DONE = "done"  # finished: ``reply`` holds the stored reply


class Lookup(NamedTuple):
    state: State
    reply: bytes | None = None

    @staticmethod
    def of(value: bytes | None) -> Lookup:
        """The lookup for a stored value (None: the caller just inserted its marker)."""
        if value is None:
            return Lookup(State.CLAIMED)
        if value[:1] == DONE:
            return Lookup(State.DONE, bytes(value[1:]))
        return Lookup(State.IN_FLIGHT)


class Notifier:
    """Wakes the copies waiting in this process when a key is completed or released.

    Only a hint that makes same-process waits immediate: waiters still poll the backend
    (another replica, or an expired lease, never calls :meth:`notify` here).
    """

    def __init__(self) -> None:
        self._events: dict[str, list] = {}  # hkey -> [Event, number of waiters]

    async def wait(self, hkey: str, timeout_s: float) -> None:
        slot = self._events.get(hkey)
        if slot is None:
            slot = self._events[hkey] = [asyncio.Event(), 0]
        slot[1] += 1
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await slot[0].wait()
        except TimeoutError:
            pass
        finally:
            slot[1] -= 1
            if slot[1] == 0 and self._events.get(hkey) is slot:
                del self._events[hkey]

    def notify(self, hkey: str) -> None:
        slot = self._events.pop(hkey, None)
        if slot is not None:
            slot[0].set()


class Backend(Protocol):
    """The atomic operations a Deduplicator needs. Failures raise :class:`BackendError`
    (or TimeoutError/OSError, which the Deduplicator treats the same)."""

    notifier: Notifier

    async def claim(self, hkey: str, marker: bytes, lease_s: float,
                    refresh_ttl_s: float | None) -> Lookup:
        """Insert ``marker`` for ``lease_s`` unless the key exists; else return its state
        (and, if ``refresh_ttl_s``, restart a finished entry's TTL: sliding window)."""

    async def insert_new(self, hkey: str, marker: bytes, lease_s: float) -> Lookup:
        """Like claim, for a key the pre-filter believes new: may skip the read first."""

    async def complete(self, hkey: str, marker: bytes, reply: bytes, ttl_s: float) -> bool:
        """Store the reply if ``marker`` still owns the key (or the key is gone)."""

    async def release(self, hkey: str, marker: bytes) -> bool:
        """Delete the key if ``marker`` still owns it."""

    async def release_many(self, items: list[tuple[str, bytes]]) -> None:
        """Release several (hkey, marker) pairs in one round trip where possible."""

    async def count(self) -> int:
        """Entries currently stored (in flight or finished)."""

    async def aclose(self) -> None: ...
