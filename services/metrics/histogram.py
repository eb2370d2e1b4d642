"""Explicit-bucket histograms: one series' point, merging, percentile estimates.

    stats = summarize([Histogram.from_point(p) for p in points])   # LatencyStats (ms)

Pure functions over OTLP ``HistogramDataPoint`` values; no clock, no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.proto.metrics.v1 import metrics_pb2


def percentile_from_buckets(
    bounds: Sequence[float],
    counts: Sequence[float],
    q: float,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    """The ``q`` quantile (0..1) of an explicit-bucket histogram.

    Bucket ``i`` is ``(bounds[i-1], bounds[i]]``; the first is open below (taken
    to start at 0, as latencies do) and the last open above. The value is
    interpolated linearly inside the bucket holding rank ``q * total``, whose
    range is first narrowed to the observed ``[lo, hi]`` when those are known;
    without ``hi`` the open top bucket answers its lower bound.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if len(counts) != len(bounds) + 1:
        raise ValueError("need exactly one more bucket count than bounds")
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = q * total
    last = max(i for i, count in enumerate(counts) if count > 0)
    seen = 0.0
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        if seen + count >= rank or i == last:  # `last` guards against float rounding
            lower = bounds[i - 1] if i > 0 else min(0.0, bounds[0]) if bounds else 0.0
            upper = bounds[i] if i < len(bounds) else hi
            if lo is not None:
                lower = max(lower, lo)
            if upper is None:
                return lower
            if hi is not None:
                upper = min(upper, hi)
            value = lower + (upper - lower) * min(max((rank - seen) / count, 0.0), 1.0)
            # Inconsistent input (max below its bucket) must still not leave [lo, hi].
            value = value if hi is None else min(value, hi)
            return value if lo is None else max(value, lo)
        seen += count
    raise AssertionError("unreachable: the last non-empty bucket always answers")


@dataclass(slots=True)
class Histogram:
    """One series' latest point: explicit bounds, bucket counts, count/sum/min/max."""

    bounds: tuple[float, ...]
    counts: list[int]
    count: int
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    time_ns: int = 0

    @classmethod
    def from_point(cls, p: metrics_pb2.HistogramDataPoint) -> Histogram | None:
        """None when the point is malformed (bucket counts do not match bounds)."""
        bounds, counts = tuple(p.explicit_bounds), list(p.bucket_counts)
        if not counts:  # OTLP allows count/sum only: one open bucket
            bounds, counts = (), [p.count]
        elif len(counts) != len(bounds) + 1:
            return None
        return cls(
            bounds,
            counts,
            p.count,
            p.sum if p.HasField("sum") else None,
            p.min if p.HasField("min") else None,
            p.max if p.HasField("max") else None,
            p.time_unix_nano,
        )

    def add(self, other: Histogram) -> None:
        """Fold a DELTA point (same bounds) into this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.sum = None if self.sum is None or other.sum is None else self.sum + other.sum
        self.min = None if self.min is None or other.min is None else min(self.min, other.min)
        self.max = None if self.max is None or other.max is None else max(self.max, other.max)
        self.time_ns = max(self.time_ns, other.time_ns)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0


def merge_buckets(hists: Sequence[Histogram]) -> tuple[tuple[float, ...], list[float]]:
    """Sum bucket counts; histograms with other bounds are re-binned onto the union
    of all bounds, spreading each bucket evenly over its width (the same
    assumption the interpolation makes)."""
    first = hists[0].bounds
    if all(h.bounds == first for h in hists):
        return first, [sum(c) for c in zip(*(h.counts for h in hists), strict=True)]
    bounds = tuple(sorted({b for h in hists for b in h.bounds}))
    out = [0.0] * (len(bounds) + 1)
    for h in hists:
        for i, count in enumerate(h.counts):
            lower = h.bounds[i - 1] if i > 0 else None
            upper = h.bounds[i] if i < len(h.bounds) else None
            start = 0 if lower is None else bisect.bisect_right(bounds, lower)
            end = len(bounds) if upper is None else bisect.bisect_left(bounds, upper)
            if lower is None or upper is None:  # open-ended: keep it by its finite edge
                out[end if lower is None else start] += count
                continue
            for j in range(start, end + 1):
                out[j] += count * (bounds[j] - bounds[j - 1]) / (upper - lower)
    return bounds, out


def summarize(hists: Sequence[Histogram]) -> LatencyStats:
    """Latency percentiles, mean and max over several series of one method or service."""
    hists = [h for h in hists if h.count > 0]
    if not hists:
        return LatencyStats()
    bounds, counts = merge_buckets(hists)
    lo = None if any(h.min is None for h in hists) else min(h.min for h in hists)
    hi = None if any(h.max is None for h in hists) else max(h.max for h in hists)
    with_sum = [h for h in hists if h.sum is not None]
    n = sum(h.count for h in with_sum)
    mean = sum(h.sum for h in with_sum) / n if n else 0.0

    def pct(q: float) -> float:
        return percentile_from_buckets(bounds, counts, q, lo, hi)

    return LatencyStats(pct(0.5), pct(0.9), pct(0.99), mean, pct(1.0) if hi is None else hi)
