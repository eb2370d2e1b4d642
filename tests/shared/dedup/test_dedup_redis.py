"""Redis only: replicas sharing one store, TTLs on the server, a stalled server."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from clawmesh.shared.dedup import (
    Claim,
    Deduplicator,
    DedupUnavailable,
    RedisBackend,
    exact,
    sliding_window,
)
from tests.shared.dedup.dedup_helpers import until, waiting

LOGGER = "clawmesh.shared.dedup.core"


@pytest.fixture
async def replicas(redis_url):
    """Two Deduplicators, each with its own client and connections: two replicas. (A generous
    op timeout: these tests are about coalescing, not about a slow Redis on a busy host.)"""
    made = [Deduplicator(RedisBackend(redis_url), op_timeout_s=2.0) for _ in range(2)]
    yield made
    for dedup in made:
        await dedup.aclose()


async def test_a_copy_on_another_replica_waits_for_the_original(replicas):
    a, b = replicas
    assert await a.claim("t:c:s:42", 60) == Claim(owner=True)
    copy = asyncio.create_task(b.claim("t:c:s:42", 60, wait_timeout_s=5))
    await until(waiting(b))
    assert not copy.done()
    await a.complete("t:c:s:42", b"from replica a")  # b learns it by polling, not by a notify
    assert await copy == Claim(owner=False, reply=b"from replica a", coalesced=True)
    assert (await b.claim("t:c:s:42", 60)).replayed
    assert ((await a.stats()).unique_added, (await b.stats()).unique_added) == (1, 0)


async def test_a_release_on_one_replica_hands_the_key_to_one_waiter_on_the_other(replicas):
    a, b = replicas
    await a.claim("k", 60)
    copies = [asyncio.create_task(b.claim("k", 60, wait_timeout_s=5)) for _ in range(3)]
    await until(waiting(b, 3))
    await a.release("k")
    await until(lambda: _owners(b, 1))
    await b.complete("k", b"retried")
    results = await asyncio.gather(*copies)
    assert sorted(r.owner for r in results) == [False, False, True]
    assert [r.reply for r in results if not r.owner] == [b"retried", b"retried"]


async def test_ttls_are_set_on_the_server(redis_url):
    client = aioredis.from_url(redis_url)
    dedups = [Deduplicator(RedisBackend(redis_url), strategy=s(), lease_s=30, op_timeout_s=2.0)
              for s in (exact, sliding_window)]
    try:
        for dedup in dedups:
            name = dedup.strategy.name
            rkey = "clawmesh:dedup:" + dedup.hash_key(name)
            await dedup.claim(name, 600)
            assert 29_000 < await client.pttl(rkey) <= 30_000  # in flight: the lease
            await dedup.complete(name, b"r")
            assert 599_000 < await client.pttl(rkey) <= 600_000  # finished: the TTL
            await client.pexpire(rkey, 5_000)
            assert (await dedup.claim(name, 600)).replayed
            refreshed = await client.pttl(rkey) > 5_000
            assert refreshed is (name == "sliding")
    finally:
        for dedup in dedups:
            await dedup.aclose()
        await client.aclose()


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_a_stalled_redis_costs_one_op_timeout_then_recovers(redis_server, redis_url, caplog, mode):
    caplog.set_level(logging.INFO, logger=LOGGER)
    dedup = Deduplicator(RedisBackend(redis_url), failure_mode=mode, op_timeout_s=0.05)
    loop = asyncio.get_running_loop()
    try:
        assert (await dedup.claim("warm", 60)).owner  # a pooled connection exists
        redis_server.pause()
        try:
            for i in range(4):
                started = loop.time()
                if mode == "fail_open":
                    assert await dedup.claim(f"k{i}", 60) == Claim(owner=True, degraded=True)
                else:
                    with pytest.raises(DedupUnavailable):
                        await dedup.claim(f"k{i}", 60)
                assert loop.time() - started < 0.05 + 0.15
            assert not dedup.healthy
            if mode == "fail_open":  # completing while down: not stored, no exception
                assert await dedup.complete("k0", b"r0") is False
        finally:
            redis_server.resume()
        assert (await dedup.claim("after", 60)).owner  # reconnects by itself
        assert dedup.healthy
        # A marker written by a stalled claim (Redis runs the commands already buffered
        # on a connection when it resumes: here k0's, sent on the pooled connection) was
        # released on recovery: the key is not stuck "in flight" until its lease.
        for i in range(4):
            claim = await dedup.claim(f"k{i}", 60, wait_timeout_s=1)
            assert claim.owner and not claim.degraded
        stats = await dedup.stats()
        assert stats.backend_failures >= 4
        assert stats.fail_open_passes == (4 if mode == "fail_open" else 0)
    finally:
        redis_server.resume()
        await dedup.aclose()
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelname, r.getMessage().split(";")[0]) for r in records] == [
        ("WARNING", "dedup backend failing"), ("INFO", "dedup backend healthy again")]


async def test_a_degraded_claim_completed_after_recovery_is_replayed(redis_server, redis_url):
    dedup = Deduplicator(RedisBackend(redis_url), op_timeout_s=0.05)
    try:
        await dedup.claim("warm", 60)
        redis_server.pause()
        try:
            assert (await dedup.claim("k", 60)).degraded
        finally:
            redis_server.resume()
        assert await dedup.complete("k", b"r") is True  # reply stored once Redis is back
        assert await dedup.claim("k", 60) == Claim(owner=False, reply=b"r", replayed=True)
    finally:
        redis_server.resume()
        await dedup.aclose()


def test_one_deduplicator_survives_its_event_loop(redis_url):
    """A client is remade for a new loop instead of failing on the closed one."""
    dedup = Deduplicator(RedisBackend(redis_url), op_timeout_s=2.0)

    async def first() -> None:
        assert (await dedup.claim("k", 60)).owner
        await dedup.complete("k", b"r")

    async def second() -> None:
        assert (await dedup.claim("k", 60)).replayed
        assert dedup.healthy
        await dedup.aclose()

    asyncio.run(first())
    asyncio.run(second())


async def _owners(dedup, n: int) -> bool:
    return (await dedup.stats()).unique_added >= n
