"""The Deduplicator: claim a key, then complete it with the reply or release it."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from hashlib import blake2b
from typing import NoReturn

from clawmesh.shared.dedup.base import Backend, BackendError, State
from clawmesh.shared.dedup.memory import MemoryBackend
from clawmesh.shared.dedup.strategy import Strategy, exact

__all__ = ["Claim", "DedupError", "DedupStats", "DedupUnavailable", "Deduplicator", "InFlightTimeout"]

log = logging.getLogger(__name__)

FAIL_OPEN = "fail_open"
FAIL_CLOSED = "fail_closed"


class DedupError(Exception):
    """Base of the errors a claim can raise."""


class InFlightTimeout(DedupError):
    """A copy waited for its original until the caller's time ran out."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"the original of this message is still in flight after {waited_s:.3f}s")
        self.waited_s = waited_s


class DedupUnavailable(DedupError):
    """The backend could not be asked in time and the policy is fail_closed."""


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`Deduplicator.claim`.

    ``owner``: process the message, then ``complete`` or ``release`` the key.
    Otherwise ``reply`` is the original's reply: already stored (``replayed``) or waited
    for while the original was in flight (``coalesced``). ``degraded``: the backend
    could not be asked and fail_open let the message through as unique.
    """

    owner: bool
    reply: bytes | None = None
    replayed: bool = False
    coalesced: bool = False
    degraded: bool = False


@dataclass
class DedupStats:
    duplicates_found: int = 0  # copies that found their key in flight or finished
    unique_added: int = 0  # claims won (first copies, and waiters after a release)
    current_entries: int | None = 0  # keys in the store now (None: backend unreachable)
    replays: int = 0  # copies answered with a stored reply
    coalesced: int = 0  # copies that waited for an in-flight original's reply
    in_flight_timeouts: int = 0  # copies whose wait ran out (InFlightTimeout)
    backend_failures: int = 0  # backend calls that failed or timed out
    fail_open_passes: int = 0  # claims let through as unique because of those


@dataclass
class _Lease:
    hkey: str
    marker: bytes
    ttl_s: float


class _Failed(Exception):
    """A backend call failed (already counted and logged)."""


class _DeadlineReached(Exception):
    """A poll was cut short by the caller's wait deadline, not by the op timeout."""

    def __init__(self, sent: bool) -> None:
        super().__init__()
        self.sent = sent  # the command may have reached the backend


class Deduplicator:
    """Deduplicates messages by a caller-given key, on a memory or Redis backend.

    ``clock`` drives the in-memory backend's TTLs (a Redis backend's TTLs run on the
    server). Waits for an in-flight original run on the event loop's clock: they are
    real time spent by the caller, bounded by ``wait_timeout_s``.
    """

    def __init__(self, backend: Backend | None = None, *, strategy: Strategy | None = None,
                 clock: Callable[[], float] = time.monotonic, failure_mode: str = FAIL_OPEN,
                 op_timeout_s: float = 0.05, wait_timeout_s: float = 5.0,
                 lease_s: float | None = None, poll_initial_s: float = 0.005,
                 poll_max_s: float = 0.1, orphan_limit: int = 1024) -> None:
        if failure_mode not in (FAIL_OPEN, FAIL_CLOSED):
            raise ValueError(f"failure_mode must be {FAIL_OPEN!r} or {FAIL_CLOSED!r}")
        self.backend: Backend = backend if backend is not None else MemoryBackend(clock=clock)
        self.strategy = strategy if strategy is not None else exact()
        self.failure_mode = failure_mode
        self.op_timeout_s = op_timeout_s
        self.wait_timeout_s = wait_timeout_s
        self.lease_s = lease_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self._stats = DedupStats()
        self._owned: dict[str, _Lease] = {}
        self._healthy = True
        # Markers whose write may have reached the backend although the call failed
        # (a stalled Redis runs buffered commands when it resumes): released on recovery.
        self._orphans: deque[tuple[str, bytes]] = deque(maxlen=orphan_limit)
        self._tasks: set[asyncio.Task] = set()

    # -- the API --------------------------------------------------------------------------

    async def claim(self, key: str, ttl_s: float, *, wait_timeout_s: float | None = None) -> Claim:
        """Claim ``key`` for ``ttl_s`` seconds (see :class:`Claim`).

        A copy of an in-flight key waits at most ``wait_timeout_s`` (default: the
        Deduplicator's) for the original, then raises :class:`InFlightTimeout`; if the
        original releases, exactly one waiter becomes the owner. Raises
        :class:`DedupUnavailable` when the backend fails and the policy is fail_closed.
        """
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (self.wait_timeout_s if wait_timeout_s is None else wait_timeout_s)
        hkey = self.hash_key(key)
        marker = b"I" + secrets.token_hex(8).encode()
        lease_s = self.lease_s if self.lease_s is not None else ttl_s
        refresh = ttl_s if self.strategy.sliding else None
        backoff, polls = self.poll_initial_s, 0
        while True:
            try:
                if polls == 0 and self.strategy.probably_new(hkey):
                    found = await self._call(None, self.backend.insert_new, hkey, marker, lease_s)
                else:
                    found = await self._call(deadline if polls else None, self.backend.claim,
                                             hkey, marker, lease_s, refresh)
            except _Failed as exc:
                self._orphans.append((hkey, marker))
                return self._on_failure(key, hkey, marker, ttl_s, exc)
            except asyncio.CancelledError:  # the caller gave up: don't leave our marker behind
                self._spawn(self._release_quietly(hkey, marker))
                raise
            except _DeadlineReached as cut:
                if cut.sent:  # the cut poll may still claim the key: give it back
                    self._spawn(self._release_quietly(hkey, marker))
                return self._timed_out(loop.time() - started)
            self.strategy.remember(hkey)
            if found.state is State.CLAIMED:
                self._owned[key] = _Lease(hkey, marker, ttl_s)
                self._stats.unique_added += 1
                return Claim(owner=True)
            if polls == 0:
                self._stats.duplicates_found += 1
            if found.state is State.DONE:
                if polls == 0:
                    self._stats.replays += 1
                    return Claim(owner=False, reply=found.reply, replayed=True)
                self._stats.coalesced += 1
                return Claim(owner=False, reply=found.reply, coalesced=True)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self._timed_out(loop.time() - started)
            # Polling with a backoff capped by the caller's remaining time (see the
            # package docstring for why not pub/sub); same-process completions wake now.
            await self.backend.notifier.wait(hkey, min(backoff, remaining))
            backoff = min(backoff * 2, self.poll_max_s)
            polls += 1

    async def complete(self, key: str, reply: bytes) -> bool:
        """Store the owner's reply for the claim's TTL and wake the copies waiting for it.

        Returns False if it could not be stored (lease expired and taken over, or the
        backend failed: never raises for that, the reply already exists).
        """
        lease = self._take(key)
        try:
            return await self._call(None, self.backend.complete, lease.hkey, lease.marker, reply,
                                    lease.ttl_s)
        except _Failed:
            self._orphans.append((lease.hkey, lease.marker))
            self.backend.notifier.notify(lease.hkey)
            return False

    async def release(self, key: str) -> bool:
        """Give the key up after a failure: the next copy (or one waiter) may own it."""
        lease = self._take(key)
        try:
            return await self._call(None, self.backend.release, lease.hkey, lease.marker)
        except _Failed:
            self._orphans.append((lease.hkey, lease.marker))
            self.backend.notifier.notify(lease.hkey)
            return False

    async def stats(self) -> DedupStats:
        """The counters, with ``current_entries`` asked from the backend (1 s bound)."""
        try:
            async with asyncio.timeout(max(1.0, self.op_timeout_s)):
                entries: int | None = await self.backend.count()
        except (TimeoutError, BackendError, OSError):
            entries = None
        return replace(self._stats, current_entries=entries)

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.backend.aclose()

    @staticmethod
    def hash_key(key: str) -> str:
        """The stored key: a 128-bit hash, so entries have one size whatever the key."""
        return blake2b(key.encode("utf-8"), digest_size=16).hexdigest()

    # -- internals ------------------------------------------------------------------------

    def _take(self, key: str) -> _Lease:
        lease = self._owned.pop(key, None)
        if lease is None:
            raise KeyError(f"this Deduplicator holds no claim on key {key!r}")
        return lease

    def _timed_out(self, waited_s: float) -> NoReturn:
        self._stats.in_flight_timeouts += 1
        raise InFlightTimeout(waited_s)

    def _on_failure(self, key: str, hkey: str, marker: bytes, ttl_s: float, exc: _Failed) -> Claim:
        if self.failure_mode == FAIL_CLOSED:
            raise DedupUnavailable(f"dedup backend unavailable: {exc.__cause__!r}") from exc.__cause__
        self._stats.fail_open_passes += 1
        # Still a lease: complete() stores the reply if the backend is back by then.
        self._owned[key] = _Lease(hkey, marker, ttl_s)
        return Claim(owner=True, degraded=True)

    async def _call(self, deadline: float | None, op, *args):
        """One backend call bounded by the op timeout (and the wait deadline, if any)."""
        budget, cut_by_deadline = self.op_timeout_s, False
        if deadline is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining < budget:
                budget, cut_by_deadline = remaining, True
            if budget <= 0:
                raise _DeadlineReached(sent=False)
        try:
            async with asyncio.timeout(budget):
                result = await op(*args)
        except TimeoutError as exc:
            if cut_by_deadline:
                raise _DeadlineReached(sent=True) from exc
            self._mark_failing(exc)
            raise _Failed from exc
        except (BackendError, OSError) as exc:
            self._mark_failing(exc)
            raise _Failed from exc
        if not self._healthy:
            await self._recover()
        return result

    def _mark_failing(self, exc: BaseException) -> None:
        self._stats.backend_failures += 1
        if self._healthy:
            self._healthy = False
            log.warning("dedup backend failing; %s until it answers again", self.failure_mode,
                        extra={"error": repr(exc)})

    async def _recover(self) -> None:
        self._healthy = True
        log.info("dedup backend healthy again", extra={"orphans": len(self._orphans)})
        orphans = list(self._orphans)
        self._orphans.clear()
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await self.backend.release_many(orphans)
        except (TimeoutError, BackendError, OSError) as exc:
            self._orphans.extend(orphans)
            self._mark_failing(exc)

    async def _release_quietly(self, hkey: str, marker: bytes) -> None:
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await self.backend.release(hkey, marker)
        except (TimeoutError, BackendError, OSError):
            self._orphans.append((hkey, marker))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
