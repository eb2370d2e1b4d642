"""Redis backend: one global limit across instances, server time, and a dead Redis."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from clawmesh.shared.ratelimit import (
    Decision,
    Limit,
    RateLimiter,
    RateLimitUnavailable,
    RedisBackend,
    Rule,
)
from tests.conftest import free_port

ACME = (("tenant", "acme"),)
OP_TIMEOUT_S = 0.05
SLACK_S = 0.04  # event-loop scheduling on a busy test machine
RULES = [Rule((("tenant", None),), [Limit.per_minute("g", 1, burst=10)])]  # no refill during a test


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("shared_clock", [None, "fake"], ids=["server-time", "caller-time"])
async def test_two_instances_with_their_own_connections_share_one_limit(redis_url, clock, shared_clock):
    use = None if shared_clock is None else clock
    first = RateLimiter(RULES, RedisBackend.from_url(redis_url, clock=use, op_timeout_s=1.0))
    second = RateLimiter(RULES, RedisBackend.from_url(redis_url, clock=use, op_timeout_s=1.0))
    assert first.backend.client.connection_pool is not second.backend.client.connection_pool
    try:
        decisions = await asyncio.gather(*(lim.check(ACME) for _ in range(20) for lim in (first, second)))
        assert sum(d.allowed for d in decisions) == 10
        assert first.stats.allowed + second.stats.allowed == 10
        assert first.stats.refused + second.stats.refused == 30
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))
    finally:
        await first.aclose()
        await second.aclose()


async def test_server_time_gives_the_wait_from_redis_clock(redis_url):
    limiter = RateLimiter(RULES, RedisBackend.from_url(redis_url, op_timeout_s=1.0))
    try:
        for _ in range(10):
            assert (await limiter.check(ACME)).allowed
        refused = await limiter.check(ACME)
        assert not refused.allowed and refused.limit_name == "g" and refused.remaining == 0
        assert 59.0 < refused.retry_after_s <= 60.0
    finally:
        await limiter.aclose()


async def test_refused_decision_becomes_a_rate_limited_error():
    error = Decision(False, 1.5, 0, "g").error(ACME)
    assert (error.retry_after_s, error.subject) == (1.5, "ratelimit:g:tenant=acme")
    assert error.to_status().code == 8  # RESOURCE_EXHAUSTED


async def test_unreachable_redis_fails_open_fast():
    limiter = RateLimiter(RULES, RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                                       op_timeout_s=OP_TIMEOUT_S))
    try:
        started = time.perf_counter()
        assert await limiter.check(ACME) == Decision(True, 0.0, -1, "", degraded=True)
        assert time.perf_counter() - started < OP_TIMEOUT_S + SLACK_S
        assert not limiter.available and limiter.stats.backend_errors == 1
    finally:
        await limiter.aclose()


async def timed(coro) -> tuple[object, float]:
    started = time.perf_counter()
    try:
        result = await coro
    except RateLimitUnavailable as exc:
        result = exc
    return result, time.perf_counter() - started


async def test_paused_redis_fails_open_within_the_timeout_and_recovers(redis_url, redis_server, caplog):
    mono = Monotonic()
    limiter = RateLimiter(RULES, RedisBackend.from_url(redis_url, op_timeout_s=OP_TIMEOUT_S),
                          fail_open=True, probe_interval_s=1.0, monotonic=mono)
    caplog.set_level(logging.INFO, logger="clawmesh.shared.ratelimit")
    try:
        assert (await limiter.check(ACME)).allowed and limiter.available  # connected, script loaded
        redis_server.pause()
        try:
            degraded = Decision(True, 0.0, -1, "", degraded=True)
            for step in range(6):  # probes at 0, 1, 2 s time out; between them no Redis call
                decision, took = await timed(limiter.check(ACME))
                assert decision == degraded
                assert took < OP_TIMEOUT_S + (SLACK_S if step % 2 == 0 else 0)  # else: Redis not asked
                mono.t += 0.5
            assert not limiter.available
        finally:
            redis_server.resume()
        # The next probe finds it back. (On a busy host the resumed server may still be
        # working off what was buffered when the probe's op timeout ends: probe again.)
        tries = 0
        while tries < 5:
            tries += 1
            mono.t += 1.0
            decision, took = await timed(limiter.check(ACME))
            if not decision.degraded:
                break
        assert decision.allowed and not decision.degraded and decision.limit_name == "g"
        assert limiter.available
        assert (await limiter.check(ACME)).limit_name == "g"
    finally:
        await limiter.aclose()
    errors = 6 + tries - 1
    assert limiter.stats.snapshot() == {"checks": 8 + tries, "allowed": 8 + tries, "refused": 0,
                                        "backend_errors": errors}
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.endswith("limiter")]
    assert records == [("WARNING", "rate limit backend unavailable: failing open"),
                       ("INFO", "rate limit backend available again")]
    assert caplog.records[-1].failed_checks == errors


async def test_paused_redis_fails_closed_within_the_timeout_and_recovers(redis_url, redis_server):
    mono = Monotonic()
    limiter = RateLimiter(RULES, RedisBackend.from_url(redis_url, op_timeout_s=OP_TIMEOUT_S),
                          fail_open=False, probe_interval_s=1.0, monotonic=mono)
    try:
        assert (await limiter.check(ACME)).allowed
        redis_server.pause()
        try:
            error, took = await timed(limiter.check(ACME))
            assert isinstance(error, RateLimitUnavailable) and error.retry_after_s == 1.0
            assert took < OP_TIMEOUT_S + SLACK_S
            assert error.to_status().code == 14  # UNAVAILABLE: not the caller's quota
            mono.t += 0.25
            error, took = await timed(limiter.check(ACME))
            assert isinstance(error, RateLimitUnavailable) and error.retry_after_s == 0.75
            assert took < OP_TIMEOUT_S  # Redis not asked
        finally:
            redis_server.resume()
        mono.t += 1.0
        decision = await limiter.check(ACME)
        assert decision.allowed and not decision.degraded and limiter.available
    finally:
        await limiter.aclose()
    assert limiter.stats.snapshot() == {"checks": 4, "allowed": 2, "refused": 2, "backend_errors": 2}
