"""Properties over arbitrary request sequences: the admitted amount never exceeds
rate × elapsed + burst, waits are exact, and both backends decide identically."""

from __future__ import annotations

import itertools
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawmesh.shared.ratelimit import Limit, MemoryBackend, RateLimiter, RedisBackend, Rule, gcra

START_US = 1_000_000_000  # clock readings are whole microseconds: exact in float seconds

limit_st = st.builds(
    Limit,
    name=st.sampled_from(["l"]),
    rate=st.integers(1, 50),
    per_s=st.sampled_from([0.1, 1.0, 3.0, 60.0]),
    burst=st.integers(1, 20),
)
limits_st = st.lists(limit_st, min_size=1, max_size=3).map(
    lambda ls: [Limit(f"l{i}", lim.rate, lim.per_s, lim.burst) for i, lim in enumerate(ls)]
)
requests_st = st.lists(st.tuples(st.integers(0, 3_000_000), st.integers(0, 22)), max_size=60)


class UsClock:
    def __init__(self) -> None:
        self.us = START_US

    def __call__(self) -> float:
        return self.us / 1_000_000


def assert_within_rate(admitted: list[tuple[int, int]], limit: Limit) -> None:
    """For every window [t_i, t_j] of admitted requests: Σ cost ≤ rate·(t_j − t_i) + burst."""
    rate_per_us = Fraction(repr(float(limit.rate))) / Fraction(repr(float(limit.per_s))) / 1_000_000
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            assert total <= rate_per_us * (admitted[j][0] - admitted[i][0]) + limit.burst


@settings(max_examples=300, deadline=None)
@given(limits=limits_st, requests=requests_st)
async def test_admitted_never_exceeds_rate_times_elapsed_plus_burst(limits, requests):
    clock = UsClock()
    limiter = RateLimiter([Rule((("tenant", None),), limits)], MemoryBackend(clock=clock))
    admitted: list[tuple[int, int]] = []
    for gap_us, cost in requests:
        clock.us += gap_us
        decision = await limiter.check((("tenant", "t"),), cost)
        if decision.allowed:
            admitted.append((clock.us, cost))
    for limit in limits:
        assert_within_rate(admitted, limit)
    assert limiter.stats.checks == len(requests) == limiter.stats.allowed + limiter.stats.refused


@settings(max_examples=300, deadline=None)
@given(limits=limits_st, requests=requests_st)
def test_the_wait_is_exact_and_a_refusal_changes_nothing(limits, requests):
    tats: list[int | None] = [None] * len(limits)
    now = START_US
    for gap_us, cost in requests:
        now += gap_us
        if any(cost > limit.burst for limit in limits):
            continue  # the limiter answers these itself (retry_after inf)
        verdict, new_tats = gcra(tats, limits, cost, now)
        if verdict.allowed:
            assert verdict.retry_after_us == 0 and new_tats is not None
            tats = list(new_tats)
            continue
        assert new_tats is None and verdict.retry_after_us > 0
        assert not gcra(tats, limits, cost, now + verdict.retry_after_us - 1)[0].allowed
        assert gcra(tats, limits, cost, now + verdict.retry_after_us)[0].allowed


_prefixes = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limits=limits_st, requests=requests_st)
async def test_redis_decides_exactly_as_memory(redis_url, limits, requests):
    clock = UsClock()
    rules = [Rule((("tenant", None),), limits)]
    memory = RateLimiter(rules, MemoryBackend(clock=clock))
    redis = RateLimiter(rules, RedisBackend.from_url(redis_url, clock=clock, op_timeout_s=1.0,
                                                     prefix=f"p{next(_prefixes)}:"))
    try:
        for gap_us, cost in requests:
            clock.us += gap_us
            assert await redis.check((("tenant", "t"),), cost) == await memory.check((("tenant", "t"),), cost)
    finally:
        await redis.aclose()
