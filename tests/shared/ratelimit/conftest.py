"""Fixtures for the rate limiter tests: a fake clock and a limiter on either backend."""

from __future__ import annotations

import pytest

from clawmesh.shared.ratelimit import MemoryBackend, RateLimiter, RedisBackend
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request, clock):
    """``make_limiter(rules, **limiter_kwargs)`` on the parametrized backend, fake clock.

    The Redis backend gets the fake clock's reading passed into its script.
    """
    made: list[RateLimiter] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(rules, **kwargs) -> RateLimiter:
        if url is None:
            backend = MemoryBackend(clock=clock)
        else:
            backend = RedisBackend.from_url(url, clock=clock, op_timeout_s=1.0)
        limiter = RateLimiter(rules, backend, **kwargs)
        made.append(limiter)
        return limiter

    make.kind = request.param
    yield make
    for limiter in made:
        await limiter.aclose()
