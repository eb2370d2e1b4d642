"""What only the Redis backend has: the durability check, native expiry, replicas, a dead server.

The contract both backends keep is in test_memory_contract.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from clawmesh.services.memory.records import Limits, Message
from clawmesh.services.memory.redis_store import RedisStore, parse_member, session_member
from clawmesh.shared.errors import Unavailable

LIMITS = Limits(max_messages=5)


def msg(content: str) -> Message:
    return Message(role=2, content=content)


async def config(url: str) -> tuple[str, str]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        conf = await client.config_get("append*")
        return conf["appendonly"], conf["appendfsync"]
    finally:
        await client.aclose()


@pytest.mark.parametrize("tenant, session", [("t", "s"), ("a.b", "1.c"), ("", ""), ("é:9", "x.y.z")])
def test_session_members_parse_back(tenant, session):
    assert parse_member(session_member(tenant, session)) == (tenant, session)


async def test_a_server_without_aof_is_refused_by_default(redis_url):
    with pytest.raises(RuntimeError, match="appendfsync always"):
        await RedisStore.open(redis_url, LIMITS)
    with pytest.raises(RuntimeError, match="'none'"):
        await RedisStore.open(redis_url, LIMITS, durability="everysec")
    store = await RedisStore.open(redis_url, LIMITS, durability="none")  # loss accepted
    await store.close()
    assert await config(redis_url) == ("no", "everysec")  # nothing was changed


async def test_configure_turns_aof_on(make_redis):
    server = make_redis()
    store = await RedisStore.open(server.url, LIMITS, configure=True)
    try:
        assert await store.persistence() == "always"
        assert await config(server.url) == ("yes", "always")
        await store.append("t", "s", [msg("kept")])
    finally:
        await store.close()


async def test_everysec_is_accepted_only_when_asked_for(make_redis):
    server = make_redis("--appendonly", "yes", "--appendfsync", "everysec")
    with pytest.raises(RuntimeError, match="'everysec'"):
        await RedisStore.open(server.url, LIMITS)
    store = await RedisStore.open(server.url, LIMITS, durability="everysec")
    await store.close()
    store = await RedisStore.open(make_redis("--appendonly", "yes").url, LIMITS, durability="everysec")
    await store.close()


async def test_a_server_that_hides_config_is_warned_about(make_redis, caplog):
    server = make_redis("--rename-command", "CONFIG", "")
    with caplog.at_level(logging.WARNING):
        store = await RedisStore.open(server.url, LIMITS)
    await store.close()
    assert "cannot read the Redis persistence settings" in caplog.text


async def test_keys_carry_native_expiry(redis_url):
    limits = Limits(max_messages=5, session_ttl_s=60, idempotency_ttl_s=30, sweep_interval_s=10)
    store = await RedisStore.open(redis_url, limits, durability="none")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.append("t", "s", [msg("x")], idempotency_key="k")
        member = session_member("t", "s")
        for key in (f"s:{member}", f"m:{member}"):  # the TTL plus one sweep interval
            assert 69_000 < await client.pttl(f"clawmesh:memory:{key}") <= 70_000
        assert 29_000 < await client.pttl(f"clawmesh:memory:i:{member}:k") <= 30_000
        assert await client.zscore("clawmesh:memory:expiry", member) is not None
    finally:
        await client.aclose()
        await store.close()


async def test_replicas_share_sessions_and_sequences(redis_url):
    replicas = [await RedisStore.open(redis_url, LIMITS, durability="none") for _ in range(3)]
    try:
        results = await asyncio.gather(*(
            replicas[i % 3].append("t", "s", [msg(f"m{i}")], idempotency_key=f"k{i}") for i in range(30)))
        assert sorted(r.sequences[0] for r in results) == list(range(1, 31))
        again = await replicas[1].append("t", "s", [msg("m0")], idempotency_key="k0")
        assert again.duplicate and again.sequences == results[0].sequences
        histories = [await r.history("t", "s") for r in replicas]
        assert histories[0] == histories[1] == histories[2]
        assert histories[0].last_sequence == 30
    finally:
        for replica in replicas:
            await replica.close()


async def test_stores_with_other_prefixes_do_not_meet(redis_url):
    one = await RedisStore.open(redis_url, LIMITS, prefix="app1:", durability="none")
    two = await RedisStore.open(redis_url, LIMITS, prefix="app2:", durability="none")
    try:
        await one.append("t", "s", [msg("one")])
        assert (await two.history("t", "s")).messages == []
        assert (await two.append("t", "s", [msg("two")])).sequences == [1]
    finally:
        await one.close()
        await two.close()


async def test_a_dead_redis_is_unavailable_then_recovers(make_redis):
    server = make_redis("--appendonly", "yes", "--appendfsync", "always")
    store = await RedisStore.open(server.url, LIMITS, timeout_s=0.5)
    try:
        await store.append("t", "s", [msg("before")])
        server.kill()
        with pytest.raises(Unavailable):
            await store.append("t", "s", [msg("lost")])
        with pytest.raises(Unavailable):
            await store.history("t", "s")
        server.restart()
        assert (await store.append("t", "s", [msg("after")])).sequences == [2]
        assert [m.content for m in (await store.history("t", "s")).messages] == ["before", "after"]
    finally:
        await store.close()
