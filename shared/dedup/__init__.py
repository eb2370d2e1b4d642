"""Message deduplication: the first copy of a key is processed, every other copy gets
its reply — replayed if it finished, waited for (coalesced) if it is still in flight.

No gRPC here: the ingest interceptor is a thin adapter over this. The caller gives the
key, already scoped (tenant + channel + session + channel message id, or the client's
idempotency key); nothing here derives a key from content. Usage::

    from clawmesh.shared.dedup import Deduplicator, InFlightTimeout, RedisBackend, make_strategy

    dedup = Deduplicator(RedisBackend("redis://redis:6379/0"),   # or Deduplicator() in process
                         strategy=make_strategy("exact"), failure_mode="fail_open",
                         op_timeout_s=0.05)

    async def handle(key: str, message, remaining_s: float) -> bytes:
        try:
            claim = await dedup.claim(key, ttl_s=600, wait_timeout_s=remaining_s)
        except InFlightTimeout:
            ...  # the original is still running: DEADLINE_EXCEEDED / ABORTED, client retries
        # (DedupUnavailable only with failure_mode="fail_closed": answer UNAVAILABLE)
        if not claim.owner:
            return claim.reply                 # replayed or coalesced: don't run it again
        try:
            reply = await process(message)     # bytes: e.g. the serialized response
        except BaseException:
            await dedup.release(key)           # a later copy (or one waiter) may try again
            raise
        await dedup.complete(key, reply)       # stored for ttl_s, waiters get it now
        return reply

Strategies (:mod:`.strategy`): ``exact`` (hash of the key + TTL), ``sliding`` (TTL
refreshed by every copy seen), ``bloom`` (a Bloom pre-filter skips the store read for keys
this process never saw; a "maybe" reads the exact store, and the write is always an atomic
insert-if-absent, so the filter never makes a false duplicate), ``combined`` (bloom +
exact + sliding). One claim mechanism; a strategy only sets those two knobs.

Waiting for an in-flight original across replicas is **polling with a backoff** (5 ms
doubling to 100 ms, each sleep capped by the caller's remaining time), not pub/sub:

* a duplicate that arrives while its original is still running is rare (a channel's
  retry), so a handful of GETs per such copy costs less than a subscriber connection per
  replica and a per-key channel lifecycle;
* pub/sub is fire-and-forget: a completion published while the waiter's connection is
  reconnecting, or between its check and its SUBSCRIBE, is lost, so waiters must poll
  anyway to be correct — polling alone is the same correctness with less machinery;
* each poll is the claim itself (one Lua script), so when an original releases, the
  next poll claims atomically and exactly one waiter becomes the owner; an owner that
  died is covered by its marker's lease expiring.

Copies in the same process don't pay the poll latency: complete/release wake them
(:class:`~.base.Notifier`). Added latency for a cross-replica copy is at most one
backoff step (≤ 100 ms) after the original completes.

Failures: every backend call is bounded by ``op_timeout_s``; on timeout or connection
error ``fail_open`` lets the message through as unique (``Claim.degraded``, counted in
``fail_open_passes``), ``fail_closed`` raises :class:`DedupUnavailable`. One log line
per state change (healthy → failing → healthy). complete/release never raise for a
backend failure (they return False).
"""

from clawmesh.shared.dedup.base import Backend, BackendError
from clawmesh.shared.dedup.core import (
    FAIL_CLOSED,
    FAIL_OPEN,
    Claim,
    DedupError,
    Deduplicator,
    DedupStats,
    DedupUnavailable,
    InFlightTimeout,
)
from clawmesh.shared.dedup.memory import MemoryBackend
from clawmesh.shared.dedup.redis import RedisBackend
from clawmesh.shared.dedup.strategy import (
    BloomPrefilter,
    Strategy,
    bloom,
    combined,
    exact,
    make_strategy,
    sliding_window,
)

__all__ = [
    "FAIL_CLOSED", "FAIL_OPEN", "Backend", "BackendError", "BloomPrefilter", "Claim",
    "DedupError", "DedupStats", "DedupUnavailable", "Deduplicator", "InFlightTimeout",
    "MemoryBackend", "RedisBackend", "Strategy", "bloom", "combined", "exact",
    "sliding_window", "make_strategy",
]
