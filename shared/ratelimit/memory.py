"""GCRA arithmetic (the reference the Lua script mirrors) and the in-process backend.

GCRA keeps one number per bucket, the theoretical arrival time (TAT): the instant
the bucket would be full again. With emission interval ``T`` and burst ``B``, a
request of cost ``n`` at ``now`` is admitted when

    max(TAT, now) + n·T − B·T  ≤  now

and then TAT becomes ``max(TAT, now) + n·T``. Otherwise it is refused, nothing
changes, and it would be admitted after ``max(TAT, now) + n·T − B·T − now``. Over
any interval of length ``d`` at most ``B + d/T`` units are admitted. All values
are integer microseconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from clawmesh.shared.ratelimit.model import Clock, Decision, Limit, to_us


@dataclass(frozen=True)
class Verdict:
    """The outcome in microseconds; ``index`` is the named limit."""

    allowed: bool
    index: int
    retry_after_us: int
    remaining: int

    def decision(self, limits: Sequence[Limit]) -> Decision:
        return Decision(self.allowed, self.retry_after_us / 1_000_000, self.remaining,
                        limits[self.index].name)


def gcra(tats: Sequence[int | None], limits: Sequence[Limit], cost: int,
         now_us: int) -> tuple[Verdict, list[int] | None]:
    """Decide one request against every limit; return the verdict and, if admitted,
    the new TAT of each bucket (``None`` state = a full bucket).

    Named limit: when refused, the one with the longest wait (the first on ties);
    when admitted, the one with the least quota left (the first on ties).
    """
    new_tats: list[int] = []
    worst, worst_wait, worst_left = -1, -1, 0
    tightest, tightest_left = 0, -1
    for i, (stored, limit) in enumerate(zip(tats, limits, strict=True)):
        interval, burst = limit.interval_us, limit.burst
        tat = now_us if stored is None or stored < now_us else stored
        new_tat = tat + cost * interval
        allow_at = new_tat - burst * interval
        if allow_at > now_us:
            wait = allow_at - now_us
            if wait > worst_wait:
                left = max(0, (now_us - (tat - burst * interval)) // interval)
                worst, worst_wait, worst_left = i, wait, left
        else:
            left = (now_us - allow_at) // interval
            if tightest_left < 0 or left < tightest_left:
                tightest, tightest_left = i, left
        new_tats.append(new_tat)
    if worst >= 0:
        return Verdict(False, worst, worst_wait, worst_left), None
    return Verdict(True, tightest, 0, tightest_left), new_tats


class MemoryBackend:
    """Buckets in a dict, for one process (tests, a single replica, per-process limits).

    ``clock`` is any seconds clock (monotonic by default). A check never awaits, so
    it is atomic on the event loop. Buckets that are full again are dropped
    whenever the dict has doubled since the last sweep (amortised O(1)).
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._tats: dict[str, int] = {}
        self._sweep_at = 1024

    def __len__(self) -> int:
        return len(self._tats)

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        return self.acquire_now(keys, limits, cost)

    def acquire_now(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """The synchronous form of :meth:`acquire`."""
        now_us = to_us(self.clock())
        verdict, new_tats = gcra([self._tats.get(k) for k in keys], limits, cost, now_us)
        if new_tats is not None:
            for key, tat in zip(keys, new_tats, strict=True):
                self._tats[key] = tat
            if len(self._tats) >= self._sweep_at:
                self._sweep(now_us)
        return verdict.decision(limits)

    def _sweep(self, now_us: int) -> None:
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now_us}
        self._sweep_at = max(1024, 2 * len(self._tats))

    async def aclose(self) -> None:
        self._tats.clear()
