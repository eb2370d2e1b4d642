"""The limiter's contract, run on both backends with a fake clock (exact figures)."""

from __future__ import annotations

import math

import pytest

from clawmesh.shared.ratelimit import Decision, Limit, Rule

ACME = (("tenant", "acme"),)


def per_tenant(*limits: Limit) -> list[Rule]:
    return [Rule((("tenant", None),), limits)]


async def test_burst_then_steady_rate(make_limiter, clock):
    limiter = make_limiter(per_tenant(Limit.per_second("l", 2, burst=5)))  # one unit per 0.5 s
    for left in (4, 3, 2, 1, 0):
        assert await limiter.check(ACME) == Decision(True, 0.0, left, "l")
    assert await limiter.check(ACME) == Decision(False, 0.5, 0, "l")
    clock.advance(0.25)
    assert await limiter.check(ACME) == Decision(False, 0.25, 0, "l")
    for _ in range(20):
        clock.advance(0.25)
        assert await limiter.check(ACME) == Decision(True, 0.0, 0, "l")
        assert await limiter.check(ACME) == Decision(False, 0.5, 0, "l")
        clock.advance(0.25)
        assert await limiter.check(ACME) == Decision(False, 0.25, 0, "l")
    clock.advance(10.0)  # idle: the bucket is full again
    assert [(await limiter.check(ACME)).allowed for _ in range(6)] == [True] * 5 + [False]


async def test_admits_exactly_burst_plus_rate_times_elapsed(make_limiter, clock):
    limiter = make_limiter(per_tenant(Limit.per_second("l", 2, burst=5)))
    start, admitted = clock.now, 0
    for tick in range(101):  # one request every 0.1 s for 10 s
        clock.set(start + tick / 10)
        admitted += (await limiter.check(ACME)).allowed
    assert admitted == 5 + 2 * 10


async def test_retry_after_is_the_exact_wait_and_refusals_take_nothing(make_limiter, clock):
    limiter = make_limiter(per_tenant(Limit.per_second("l", 2, burst=5)))
    assert await limiter.check(ACME, cost=4) == Decision(True, 0.0, 1, "l")
    assert await limiter.check(ACME, cost=3) == Decision(False, 1.0, 1, "l")
    assert await limiter.check(ACME, cost=1) == Decision(True, 0.0, 0, "l")  # still there
    assert await limiter.check(ACME, cost=3) == Decision(False, 1.5, 0, "l")
    clock.advance(1.499999)
    assert await limiter.check(ACME, cost=3) == Decision(False, 0.000001, 2, "l")  # 2 of 3 back
    clock.advance(0.000001)
    assert await limiter.check(ACME, cost=3) == Decision(True, 0.0, 0, "l")
    assert await limiter.check(ACME, cost=0) == Decision(True, 0.0, 0, "l")  # a peek


async def test_every_limit_must_admit_and_the_tighter_names_itself(make_limiter, clock):
    rules = [Rule((("tenant", None), ("sender", None)),
                  [Limit.per_second("burst", 1, burst=3), Limit.per_minute("minute", 4)])]
    limiter = make_limiter(rules)
    who = (("tenant", "acme"), ("sender", "u1"))
    for left in (2, 1, 0):
        assert await limiter.check(who) == Decision(True, 0.0, left, "burst")
    assert await limiter.check(who) == Decision(False, 1.0, 0, "burst")
    clock.advance(1)
    assert await limiter.check(who) == Decision(True, 0.0, 0, "burst")  # 0 left on both
    clock.advance(1)
    assert await limiter.check(who) == Decision(False, 13.0, 0, "minute")  # 4 per minute used
    clock.advance(13)
    assert await limiter.check(who) == Decision(True, 0.0, 0, "minute")
    assert await limiter.check(who) == Decision(False, 15.0, 0, "minute")
    # Another sender has its own buckets.
    assert await limiter.check((("tenant", "acme"), ("sender", "u2"))) == Decision(True, 0.0, 2, "burst")
    assert limiter.stats.snapshot() == {"checks": 9, "allowed": 6, "refused": 3, "backend_errors": 0}
    assert limiter.stats.by_limit == {"burst": 1, "minute": 2}


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
async def test_when_several_refuse_the_longest_wait_is_named(make_limiter, order):
    limits = {"a": Limit.per_second("a", 1, burst=2), "b": Limit.per_second("b", 0.5, burst=2)}
    limiter = make_limiter(per_tenant(*(limits[name] for name in order)))
    assert await limiter.check(ACME, cost=2) == Decision(True, 0.0, 0, order[0])  # tie: first
    assert await limiter.check(ACME) == Decision(False, 2.0, 0, "b")


async def test_most_specific_rule_wins_and_each_value_has_its_own_quota(make_limiter):
    limiter = make_limiter([
        Rule((("tenant", None),), [Limit.per_second("tenant", 1, burst=1)]),
        Rule((("tenant", "acme"),), [Limit.per_second("acme", 1, burst=3)]),
    ])
    assert [(await limiter.check(ACME)).limit_name for _ in range(4)] == ["acme"] * 4
    assert (await limiter.check(ACME)).allowed is False
    for tenant in ("b", "c"):
        assert await limiter.check((("tenant", tenant),)) == Decision(True, 0.0, 0, "tenant")
        assert await limiter.check((("tenant", tenant),)) == Decision(False, 1.0, 0, "tenant")


async def test_unmatched_descriptor_and_impossible_cost(make_limiter):
    limiter = make_limiter(per_tenant(Limit.per_second("l", 2, burst=5)))
    assert await limiter.check((("method", "Submit"),)) == Decision(True, 0.0, -1, "")
    assert await limiter.check((("tenant", "acme"), ("x", "y"))) == Decision(True, 0.0, -1, "")
    assert await limiter.check(ACME, cost=6) == Decision(False, math.inf, 0, "l")
    assert await limiter.check(ACME, cost=5) == Decision(True, 0.0, 0, "l")  # nothing was taken
    assert limiter.stats.snapshot() == {"checks": 4, "allowed": 3, "refused": 1, "backend_errors": 0}


async def test_descriptor_values_are_escaped_not_confused(make_limiter):
    limiter = make_limiter([Rule((("a", None), ("b", None)), [Limit.per_second("l", 1, burst=1)])])
    assert (await limiter.check((("a", "x&b=y"), ("b", "z")))).allowed
    assert (await limiter.check((("a", "x"), ("b", "y&b=z")))).allowed
    assert (await limiter.check((("a", "{x}:l"), ("b", "")))).allowed
    assert not (await limiter.check([("a", "x&b=y"), ("b", "z")])).allowed  # lists are fine too
