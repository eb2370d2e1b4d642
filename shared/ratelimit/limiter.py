"""The rate limiter: rules → limits for a descriptor, one backend call, the fail policy.

The limiter is the same whichever backend holds the buckets. When the backend fails
(timeout, connection, script error) the check is decided by the policy —
``fail_open=True`` admits with ``Decision(degraded=True)``, ``fail_open=False``
raises :class:`RateLimitUnavailable` — and for ``probe_interval_s`` afterwards the
limiter does not ask the backend at all (no call waits on a dead Redis); then one
check probes it again. Each change of state is logged once (a WARNING when the
backend is lost, an INFO with the outage's figures when it is back).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from clawmesh.shared.ratelimit.model import (
    UNKNOWN_REMAINING,
    Backend,
    BackendError,
    Clock,
    Decision,
    Descriptor,
    Limit,
    RateLimitStats,
    RateLimitUnavailable,
    Rule,
    bucket_keys,
)

log = logging.getLogger(__name__)

NO_LIMIT = Decision(True, 0.0, UNKNOWN_REMAINING, "")
FAILED_OPEN = Decision(True, 0.0, UNKNOWN_REMAINING, "", degraded=True)


def as_descriptor(pairs: Iterable[tuple[str, str]]) -> Descriptor:
    """Validate and freeze ``[("tenant", "acme"), ...]`` into a descriptor tuple."""
    out = tuple((k, v) for k, v in pairs)
    for k, v in out:
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise ValueError(f"descriptor entries are (non-empty str, str) pairs, got {(k, v)!r}")
    return out


class RateLimiter:
    """Checks descriptors against rules; see the package docstring for an example.

    ``monotonic`` times only the fail policy's probe interval (real time, even when
    the backend runs on a fake clock).
    """

    def __init__(self, rules: Iterable[Rule], backend: Backend, *, fail_open: bool = True,
                 probe_interval_s: float = 1.0, name: str = "ratelimit",
                 monotonic: Clock = time.monotonic) -> None:
        self.backend = backend
        self.fail_open = fail_open
        self.probe_interval_s = probe_interval_s
        self.name = name
        self.stats = RateLimitStats()
        self._monotonic = monotonic
        self._rules: dict[tuple[str, ...], list[Rule]] = {}
        for rule in rules:
            self._rules.setdefault(rule.keys, []).append(rule)
        for shape in self._rules.values():
            shape.sort(key=lambda r: -r.specificity)  # stable: declaration order on ties
        self._down_since: float | None = None
        self._down_errors = 0
        self._probe_at = 0.0

    @property
    def available(self) -> bool:
        """False from a backend failure until a check succeeds again."""
        return self._down_since is None

    def limits_for(self, descriptor: Descriptor) -> tuple[Limit, ...]:
        """The limits of the most specific rule matching ``descriptor`` (() if none)."""
        for rule in self._rules.get(tuple(k for k, _ in descriptor), ()):
            if rule.matches(descriptor):
                return rule.limits
        return ()

    async def check(self, descriptor: Iterable[tuple[str, str]], cost: int = 1) -> Decision:
        """Admit ``cost`` units for ``descriptor`` under every applicable limit, or refuse
        without taking anything. Raises :class:`RateLimitUnavailable` only when the
        backend fails and the limiter fails closed."""
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
            raise ValueError(f"cost must be a non-negative int, got {cost!r}")
        descriptor = as_descriptor(descriptor)
        self.stats.checks += 1
        limits = self.limits_for(descriptor)
        if not limits:
            return self._count(NO_LIMIT)
        for limit in limits:
            if cost > limit.burst:  # never admissible: don't bother the backend
                return self._count(Decision(False, math.inf, 0, limit.name))
        if self._down_since is not None:
            now = self._monotonic()
            if now < self._probe_at:
                return self._fail(None)
            self._probe_at = now + self.probe_interval_s  # one probe at a time
        try:
            decision = await self.backend.acquire(bucket_keys(descriptor, limits), limits, cost)
        except BackendError as exc:
            return self._fail(exc)
        if self._down_since is not None:
            self._recovered()
        return self._count(decision)

    def _count(self, decision: Decision) -> Decision:
        if decision.allowed:
            self.stats.allowed += 1
        else:
            self.stats.refused += 1
            by_limit = self.stats.by_limit
            by_limit[decision.limit_name] = by_limit.get(decision.limit_name, 0) + 1
        return decision

    def _fail(self, exc: BackendError | None) -> Decision:
        now = self._monotonic()
        self.stats.backend_errors += 1
        self._down_errors += 1
        if exc is not None:
            self._probe_at = now + self.probe_interval_s
            if self._down_since is None:
                self._down_since = now
                log.warning("rate limit backend unavailable: failing %s",
                            "open" if self.fail_open else "closed",
                            extra={"limiter": self.name, "error": str(exc)})
        if self.fail_open:
            self.stats.allowed += 1
            return FAILED_OPEN
        self.stats.refused += 1
        raise RateLimitUnavailable("rate limit backend unavailable",
                                   retry_after_s=max(0.0, self._probe_at - now))

    def _recovered(self) -> None:
        down_for = self._monotonic() - (self._down_since or 0.0)
        log.info("rate limit backend available again",
                 extra={"limiter": self.name, "down_s": round(down_for, 3),
                        "failed_checks": self._down_errors})
        self._down_since = None
        self._down_errors = 0

    async def aclose(self) -> None:
        await self.backend.aclose()
