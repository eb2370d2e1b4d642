"""Limits, rules, descriptors and the in-process backend's housekeeping."""

from __future__ import annotations

import pytest

from clawmesh.shared.ratelimit import Limit, MemoryBackend, RateLimiter, Rule, as_descriptor
from clawmesh.shared.ratelimit.model import bucket_keys, descriptor_key


def test_limit_interval_is_rounded_up_to_a_microsecond_and_burst_defaults_to_the_rate():
    assert Limit.per_second("a", 2).interval_us == 500_000
    assert Limit.per_second("a", 3).interval_us == 333_334  # never faster than 3/s
    assert Limit("a", 0.1, per_s=1.0).interval_us == 10_000_000
    assert Limit.per_minute("a", 60).interval_us == 1_000_000
    assert Limit.per_second("a", 2.5).burst == 3
    assert Limit.per_second("a", 0.1).burst == 1


@pytest.mark.parametrize("kwargs", [
    {"name": "", "rate": 1}, {"name": "a:b", "rate": 1}, {"name": "a", "rate": 0},
    {"name": "a", "rate": 1, "per_s": -1}, {"name": "a", "rate": 1, "burst": -2},
    {"name": "a", "rate": 1, "burst": 1.5},
])
def test_invalid_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        Limit(**kwargs)


def test_rules_need_limits_with_distinct_names():
    with pytest.raises(ValueError):
        Rule((("tenant", None),), [Limit.per_second("a", 1), Limit.per_minute("a", 1)])
    with pytest.raises(ValueError):
        Rule((), [Limit.per_second("a", 1)])
    rule = Rule([("tenant", "acme"), ("sender", None)], [Limit.per_second("a", 1)])
    assert rule.matches((("tenant", "acme"), ("sender", "u")))
    assert not rule.matches((("tenant", "other"), ("sender", "u")))
    assert not rule.matches((("sender", "u"), ("tenant", "acme")))  # order matters, as in envoy


def test_descriptor_keys_are_escaped_and_share_one_hash_tag():
    assert descriptor_key((("tenant", "a&b=c"), ("sender", "{u}"))) == "tenant=a%26b%3Dc&sender=%7Bu%7D"
    limits = [Limit.per_second("x", 1), Limit.per_second("y", 1)]
    assert bucket_keys((("t", "a"),), limits) == ["{t=a}:x", "{t=a}:y"]
    with pytest.raises(ValueError):
        as_descriptor([("", "v")])
    with pytest.raises(ValueError):
        as_descriptor([("k", 1)])


async def test_cost_must_be_a_non_negative_int():
    limiter = RateLimiter([], MemoryBackend())
    for cost in (-1, 1.5, True):
        with pytest.raises(ValueError):
            await limiter.check((("k", "v"),), cost)


async def test_memory_backend_drops_full_buckets():
    now = [0.0]
    backend = MemoryBackend(clock=lambda: now[0])
    limiter = RateLimiter([Rule((("sender", None),), [Limit.per_second("l", 1, burst=1)])], backend)
    for i in range(1023):
        await limiter.check((("sender", str(i)),))
    assert len(backend) == 1023
    now[0] = 2.0  # every bucket is full again
    await limiter.check((("sender", "last"),))
    assert len(backend) == 1  # swept
