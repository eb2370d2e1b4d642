"""The test Redis is real: a redis-py client talks to it."""

import redis.asyncio as aioredis


async def test_real_redis_answers(redis_url):
    client = aioredis.from_url(redis_url)
    try:
        assert await client.set("k", "v", nx=True)
        assert not await client.set("k", "w", nx=True)
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
