"""Deduplicators on either backend, closed after each test."""

from __future__ import annotations

import pytest

from clawmesh.shared.dedup import Deduplicator, MemoryBackend, RedisBackend


@pytest.fixture(params=["memory", "redis"])
def backend_name(request):
    return request.param


@pytest.fixture
async def make_dedup(request, backend_name):
    """make_dedup(**kwargs) -> a Deduplicator on this test's backend.

    Memory: every Deduplicator of one test shares one store (as one process would);
    Redis: each has its own client and connections, like separate replicas.
    """
    made: list[Deduplicator] = []
    shared = MemoryBackend()
    url = request.getfixturevalue("redis_url") if backend_name == "redis" else None

    def make(**kwargs) -> Deduplicator:
        # The contract is not about Redis latency: a scheduler hiccup on a busy CI host
        # must not turn a slow reply into a degraded (fail-open) claim. Tests of the
        # timeout pass their own.
        kwargs.setdefault("op_timeout_s", 2.0)
        backend = RedisBackend(url) if url else shared
        dedup = Deduplicator(backend, **kwargs)
        made.append(dedup)
        return dedup

    yield make
    for dedup in made:
        await dedup.aclose()
