"""Concurrency limits: fixed, AIMD and gradient (Netflix concurrency-limits style).

A limit is told about every finished call (its latency, how many calls were in
flight when it started, and whether it was *dropped* — timed out or failed for
load) and answers the concurrency to allow next. The :class:`AdmissionController`
feeds it the time between acquire and release, measured on its injected clock,
so the limit is deterministic under a fake clock. The limits keep a float
internally and expose ``int(value)`` (never below ``min_limit``).

    limit = AIMDLimit(initial=10, min_limit=2, max_limit=50, target_latency_s=0.2)
    limit.on_sample(0.05, inflight=10, dropped=False)   # -> 11: fast and busy: +1
    limit.on_sample(0.50, inflight=11, dropped=False)   # -> 9: slow: 11 × 0.9 = 9.9
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable


@runtime_checkable
class Limit(Protocol):
    """What the controller needs from a limit."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, latency_s: float, inflight: int, dropped: bool) -> int:
        """Record one finished call; return the new limit."""
        ...


class FixedLimit:
    """A constant limit (a plain semaphore). ``set`` changes it by hand."""

    def __init__(self, limit: int) -> None:
        self.set(limit)

    @property
    def limit(self) -> int:
        return self._limit

    def set(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit

    def on_sample(self, latency_s: float, inflight: int, dropped: bool) -> int:
        return self._limit


class _Bounded:
    def __init__(self, initial: int, min_limit: int, max_limit: int) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial <= max_limit")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.value = float(initial)

    def _clamp(self, value: float) -> float:
        return min(float(self.max_limit), max(float(self.min_limit), value))

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self.value))


class AIMDLimit(_Bounded):
    """Additive increase, multiplicative decrease around a target latency.

    Per sample:

    - dropped, or latency > ``target_latency_s``: ``value × backoff_ratio``;
    - else, if the limit was in use (``inflight × 2 >= value``): ``value + increase``;
    - else unchanged (an idle system learns nothing about its capacity);

    then clamped to ``[min_limit, max_limit]``.
    """

    def __init__(
        self,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        target_latency_s: float = 0.5,
        backoff_ratio: float = 0.9,
        increase: float = 1.0,
    ) -> None:
        super().__init__(initial, min_limit, max_limit)
        if not 0.5 <= backoff_ratio < 1.0:
            raise ValueError("backoff_ratio must be in [0.5, 1)")
        if target_latency_s <= 0 or increase <= 0:
            raise ValueError("target_latency_s and increase must be > 0")
        self.target_latency_s = target_latency_s
        self.backoff_ratio = backoff_ratio
        self.increase = increase

    def on_sample(self, latency_s: float, inflight: int, dropped: bool) -> int:
        if dropped or latency_s > self.target_latency_s:
            self.value = self._clamp(self.value * self.backoff_ratio)
        elif inflight * 2 >= self.value:
            self.value = self._clamp(self.value + self.increase)
        return self.limit


class GradientLimit(_Bounded):
    """Gradient limit (Netflix Gradient2, simplified to one update per sample).

    The reference latency is ``target_latency_s`` when given; else, with
    ``reference="min"``, the least latency seen over the last one to two periods of
    ``long_window`` samples (the no-queueing latency, as TCP Vegas uses: it follows a
    backend that really got slower within two periods, and never drifts up with a
    queue); else a long-term exponential average of the samples (window
    ``long_window`` samples; pulled down when the short term is less than half of
    it, so a long-lived overload does not become the new normal). Per sample:

    - app-limited (``inflight < value / 2``) and not dropped: unchanged;
    - ``gradient = clamp(tolerance × reference / latency, 0.5, 1)`` (0.5 if dropped);
    - ``new = value × gradient + queue_size``;
    - ``value = value × (1 − smoothing) + new × smoothing``, clamped.

    So latency at or under ``tolerance × reference`` grows the limit by
    ``smoothing × queue_size`` a sample; latency above it shrinks it in proportion.
    """

    def __init__(
        self,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        target_latency_s: float | None = None,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        queue_size: float = 4.0,
        long_window: int = 600,
        reference: str = "average",
    ) -> None:
        super().__init__(initial, min_limit, max_limit)
        if reference not in ("average", "min"):
            raise ValueError("reference must be 'average' or 'min'")
        self.reference = reference
        self.long_window = long_window
        self._period_min = math.inf  # least latency of the current period
        self._previous_min = math.inf  # ... and of the one before
        self._period_samples = 0
        if target_latency_s is not None and target_latency_s <= 0:
            raise ValueError("target_latency_s must be > 0")
        if tolerance < 1.0 or not 0.0 < smoothing <= 1.0 or queue_size < 0 or long_window < 1:
            raise ValueError("need tolerance >= 1, 0 < smoothing <= 1, queue_size >= 0, long_window >= 1")
        self.target_latency_s = target_latency_s
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.queue_size = queue_size
        self._long_alpha = 2.0 / (long_window + 1)
        self.long_latency_s: float | None = None

    def _reference(self, latency_s: float) -> float:
        if self.target_latency_s is not None:
            return self.target_latency_s
        if self.reference == "min":
            self._period_min = min(self._period_min, latency_s)
            self._period_samples += 1
            if self._period_samples >= self.long_window:
                self._previous_min, self._period_min, self._period_samples = self._period_min, math.inf, 0
            return min(self._previous_min, self._period_min)
        if self.long_latency_s is None:
            self.long_latency_s = latency_s
        else:
            self.long_latency_s += self._long_alpha * (latency_s - self.long_latency_s)
            if latency_s > 0 and self.long_latency_s / latency_s > 2.0:
                self.long_latency_s *= 0.95
        return self.long_latency_s

    def on_sample(self, latency_s: float, inflight: int, dropped: bool) -> int:
        latency_s = max(latency_s, 0.0)
        reference = self._reference(latency_s)
        if not dropped and inflight < self.value / 2:
            return self.limit
        if dropped:
            gradient = 0.5
        elif latency_s <= 0.0:
            gradient = 1.0
        else:
            gradient = max(0.5, min(1.0, self.tolerance * reference / latency_s))
        new = self.value * gradient + self.queue_size
        value = self.value * (1.0 - self.smoothing) + new * self.smoothing
        self.value = self._clamp(value if math.isfinite(value) else self.value)
        return self.limit
