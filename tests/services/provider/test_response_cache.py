"""The response cache through a real grpc.aio provider, the HTTP stand-in and a real Redis.

Every request that reaches the backend is in ``api.requests``: a cache hit adds none. The
providers' clocks (L1 expiry, the Redis probe interval) are FakeClocks; Redis TTLs are read
from the server.
"""

import asyncio
import contextlib
import time
from types import SimpleNamespace

import grpc
import pytest
from redis.asyncio import Redis

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.backends import BackendInfo, Generation, ToolCall, ToolSpec, Turn
from clawmesh.services.provider.cache import (
    NAMESPACE,
    PROBE_INTERVAL_S,
    CacheOptions,
    Policy,
    ResponseCache,
    cache_key,
    model_tag,
    redis_cache,
    session_tag,
)
from clawmesh.services.provider.core import Provider
from clawmesh.services.provider.main import build
from clawmesh.shared.settings import OpenAIBackendConfig, ProviderSettings, SettingsError, load_settings
from tests.conftest import free_port
from tests.fakes import FakeClock
from tests.openai_standin import Reply

BYPASS, OPT_IN = provider_pb2.CACHE_POLICY_BYPASS, provider_pb2.CACHE_POLICY_OPT_IN
ACME, BETA = (("x-clawmesh-tenant", "acme"),), (("x-clawmesh-tenant", "beta"),)
SEEN = 5.0  # generous bound for events that must happen (never reached when things work)


@pytest.fixture
async def start(settings, api):
    """``await start(temperature=0.0, **cache)``: a started provider whose backend is the stand-in
    (configured with ``temperature``), with the ``cache:`` settings given (Redis operations: 1 s
    unless told, so a busy test machine never takes Redis for down)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(temperature: float | None = 0.0, **cache) -> SimpleNamespace:
            cache.setdefault("op_timeout_ms", 1000)
            settings.provider = ProviderSettings(port=0, default_backend="standin", cache=cache, backends={
                "standin": OpenAIBackendConfig(base_url=api.url, model="gpt-test", models=["gpt-other"],
                                               temperature=temperature),
            })
            clock = FakeClock()
            provider = Provider.from_settings(settings.provider, env={}, clock=clock)
            server = await build(settings, provider=provider)
            await server.start()
            stack.push_async_callback(server.stop, 0)
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            return SimpleNamespace(stub=provider_pb2_grpc.ProviderServiceStub(channel), cache=provider.cache,
                                   clock=clock)

        yield start


def message(text: str, **fields) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text, **fields)


async def generate(stub, text="what is 2+2?", metadata=(), **kwargs) -> provider_pb2.GenerateResponse:
    request = provider_pb2.GenerateRequest(messages=[message(text)], **kwargs)
    return await stub.Generate(request, timeout=5, metadata=metadata)


async def stream(stub, text="what is 2+2?", **kwargs) -> list[provider_pb2.GenerateStreamResponse]:
    request = provider_pb2.GenerateStreamRequest(messages=[message(text)], **kwargs)
    return [c async for c in stub.GenerateStream(request, timeout=5)]


async def stats(stub) -> provider_pb2.ResponseCacheStats:
    return (await stub.ListBackends(provider_pb2.ListBackendsRequest(), timeout=5)).cache


def uncached(reply):
    """``reply`` without its ``cached`` mark, to compare with the backend's."""
    copy = type(reply)()
    copy.CopyFrom(reply)
    copy.cached = False
    return copy


async def test_a_hit_is_the_identical_reply_without_a_backend_request(api, start):
    p = await start()
    first = await generate(p.stub)
    second = await generate(p.stub)
    assert (first.cached, second.cached) == (False, True)
    assert uncached(second) == first
    assert len(api.requests) == 1
    assert api.requests[0].body["temperature"] == 0  # the configured temperature is sent
    got = await stats(p.stub)
    assert (got.l1_hits, got.l2_hits, got.misses, got.writes, got.bypassed, got.errors) == (1, 0, 1, 1, 0, 0)
    assert got.l1_entries == 1


async def test_timestamps_and_user_handles_are_not_part_of_the_key(api, start):
    p = await start()
    await generate(p.stub)
    request = provider_pb2.GenerateRequest(messages=[message("what is 2+2?", name="bob")])
    request.messages[0].created_time.FromSeconds(1_700_000_000)
    assert (await p.stub.Generate(request, timeout=5)).cached
    assert not (await generate(p.stub, "what is 3+3?")).cached
    assert len(api.requests) == 2


@pytest.mark.parametrize("request_temperature, backend_temperature", [(0.7, 0.0), (0.0, None)])
async def test_a_request_that_is_not_deterministic_is_never_cached(api, start, request_temperature,
                                                                   backend_temperature):
    """Temperature > 0, or unset (0) on a backend whose default temperature is unknown."""
    p = await start(temperature=backend_temperature)
    params = provider_pb2.GenerationParams(temperature=request_temperature)
    replies = [await generate(p.stub, params=params) for _ in range(2)]
    assert [r.cached for r in replies] == [False, False]
    assert len(api.requests) == 2
    got = await stats(p.stub)
    assert (got.bypassed, got.misses, got.writes, got.l1_entries) == (2, 0, 0, 0)


async def test_bypass_neither_reads_nor_writes(api, start):
    p = await start()
    await generate(p.stub)  # stored
    assert not (await generate(p.stub, cache=BYPASS)).cached  # not read
    assert len(api.requests) == 2
    await generate(p.stub, "new question", cache=BYPASS)  # not written
    assert not (await generate(p.stub, "new question")).cached
    assert len(api.requests) == 4
    got = await stats(p.stub)
    assert (got.bypassed, got.misses, got.writes) == (2, 2, 2)


async def test_opt_in_caches_a_request_that_is_not_deterministic(api, start):
    p = await start(temperature=None)
    params = provider_pb2.GenerationParams(temperature=0.9)
    first = await generate(p.stub, params=params, cache=OPT_IN)
    second = await generate(p.stub, params=params, cache=OPT_IN)
    assert (first.cached, second.cached) == (False, True) and uncached(second) == first
    assert not (await generate(p.stub, params=params)).cached  # without the opt-in: the backend
    assert len(api.requests) == 2


async def test_disabled_cache_sends_everything_and_reports_no_stats(api, start):
    p = await start(enabled=False)
    assert [(await generate(p.stub)).cached for _ in range(2)] == [False, False]
    assert len(api.requests) == 2
    reply = await p.stub.ListBackends(provider_pb2.ListBackendsRequest(), timeout=5)
    assert not reply.HasField("cache")


async def test_two_providers_share_redis(api, start, redis_url):
    api.script(Reply("", tool_calls=[{"id": "call_1", "name": "lookup", "arguments": '{"q": "x"}'}]))
    a, b = await start(redis_url=redis_url), await start(redis_url=redis_url)
    first = await generate(a.stub, session_id="s1")
    from_redis = await generate(b.stub, session_id="s1")
    from_memory = await generate(b.stub, session_id="s1")
    assert len(api.requests) == 1
    assert (first.cached, from_redis.cached, from_memory.cached) == (False, True, True)
    assert uncached(from_redis) == uncached(from_memory) == first
    assert [c.name for c in from_redis.message.tool_calls] == ["lookup"]
    got = await stats(b.stub)
    assert (got.l1_hits, got.l2_hits, got.misses, got.writes, got.errors) == (1, 1, 0, 0, 0)


async def test_invalidation_by_session_in_memory_and_redis(api, start, redis_url):
    p, other = await start(redis_url=redis_url), await start(redis_url=redis_url)
    await generate(p.stub, "a", session_id="s1", metadata=ACME)
    await generate(p.stub, "b", session_id="s2", metadata=ACME)
    await generate(p.stub, "c", session_id="s1", metadata=BETA)  # another tenant's session "s1"
    assert len(api.requests) == 3

    assert await p.cache.invalidate(session_tag("acme", "s1")) == (1, 1)

    assert not (await generate(other.stub, "a", session_id="s1", metadata=ACME)).cached  # gone from Redis
    assert (await generate(other.stub, "b", session_id="s2", metadata=ACME)).cached
    assert (await generate(other.stub, "c", session_id="s1", metadata=BETA)).cached
    assert (await generate(p.stub, "b", session_id="s2", metadata=ACME)).cached
    assert len(api.requests) == 4
    assert await p.cache.invalidate(session_tag("acme", "nobody")) == (0, 0)


async def test_invalidation_by_model(api, start, redis_url):
    p, other = await start(redis_url=redis_url), await start(redis_url=redis_url)
    await generate(p.stub)  # the backend's default model: gpt-test
    await generate(p.stub, model="gpt-other")
    assert (await generate(p.stub, model="gpt-test")).cached  # the same entry as the default
    assert len(api.requests) == 2

    assert await p.cache.invalidate(model_tag("gpt-test")) == (1, 1)

    assert not (await generate(p.stub)).cached
    assert (await generate(other.stub, model="gpt-other")).cached
    assert len(api.requests) == 3


async def test_l1_entries_expire_by_the_injected_clock(api, start):
    p = await start(ttl_s=60)
    await generate(p.stub)
    p.clock.advance(59.5)
    assert (await generate(p.stub)).cached
    p.clock.advance(1)
    assert not (await generate(p.stub)).cached
    assert len(api.requests) == 2


async def test_redis_keeps_entries_and_tags_for_the_ttl(start, redis_url):
    p = await start(redis_url=redis_url, ttl_s=120)
    await generate(p.stub, session_id="s1", metadata=ACME)
    redis = Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in await redis.keys(NAMESPACE + ":*"))
        tags = [k for k in keys if k.startswith(NAMESPACE + ":tag:")]
        assert tags == [f"{NAMESPACE}:tag:{model_tag('gpt-test')}",
                        f"{NAMESPACE}:tag:{session_tag('acme', 's1')}"]
        [entry] = set(keys) - set(tags)
        for key in keys:
            assert 119_000 < await redis.pttl(key) <= 120_000, key
        for tag in tags:
            assert [m.decode() for m in await redis.zrange(tag, 0, -1)] == [entry]
    finally:
        await redis.aclose()


async def test_an_l1_copy_of_a_redis_entry_expires_with_it(redis_url):
    """B takes A's entry 90 s into its 100 s: B's L1 copy lasts the 10 s left."""
    wall, clock = FakeClock(0.0), FakeClock()
    a = ResponseCache(100, l2=redis_cache(redis_url, 1.0), op_timeout_s=1.0, wall=wall)
    b = ResponseCache(100, l2=redis_cache(redis_url, 1.0), op_timeout_s=1.0, wall=wall, clock=clock)
    lookup = a.lookup(BackendInfo("b", "mock", ["m"], temperature=0), "", [Turn("user", "hi")], (), 0,
                      CacheOptions())
    try:
        await a.put(lookup, Generation("hello", "m", 1, 1))
        wall.advance(90)
        assert (await b.get(lookup)).cached
        clock.advance(9.5)
        assert (await b.get(lookup)).content == "hello"
        assert b.stats()["l1_hits"] == 1
        clock.advance(1)
        await b.get(lookup)  # L1 expired: from Redis again (a FakeClock wall: it has not expired there)
        assert b.stats()["l2_hits"] == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_l1_is_bounded_least_recently_used_first():
    cache = ResponseCache(60, l1_max_entries=2)
    info = BackendInfo("b", "mock", ["m"], temperature=0)
    one, two, three = (cache.lookup(info, "", [Turn("user", t)], (), 0, CacheOptions()) for t in "123")
    for lookup in (one, two):
        await cache.put(lookup, Generation("r", "m", 1, 1))
    assert await cache.get(one) is not None  # "two" is now the least recently used
    await cache.put(three, Generation("r", "m", 1, 1))
    assert await cache.get(two) is None
    assert await cache.get(one) is not None and await cache.get(three) is not None
    assert cache.stats()["l1_entries"] == 2


async def test_paused_redis_costs_one_op_timeout_and_never_fails_a_call(api, start, redis_server, redis_url):
    p = await start(redis_url=redis_url, op_timeout_ms=50)
    other = await start(redis_url=redis_url)
    await generate(p.stub, "warm-up")
    before = (await stats(p.stub)).errors  # 0, unless this busy machine took over 50 ms already
    redis_server.pause()
    try:
        started = time.perf_counter()
        reply = await generate(p.stub, "while paused")
        elapsed = time.perf_counter() - started
        assert not reply.cached and reply.message.content == "hello from the stand-in"
        assert elapsed < 0.5  # the read's op timeout (50 ms); then Redis is skipped, the write too
        assert (await generate(p.stub, "while paused")).cached  # from L1
        assert not (await generate(p.stub, "another")).cached  # Redis skipped: no wait
        assert (await stats(p.stub)).errors == before + 4  # read failed; write, read, write skipped
    finally:
        redis_server.resume()
    p.clock.advance(PROBE_INTERVAL_S)  # the next call probes Redis again
    await generate(p.stub, "after")
    assert (await stats(p.stub)).errors == before + 4
    assert (await generate(other.stub, "after")).cached  # written to Redis again
    assert not (await generate(other.stub, "while paused")).cached  # its write was skipped


async def test_no_redis_at_all_is_counted_and_answered(api, start):
    p = await start(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # connect() found it down
    p.clock.advance(PROBE_INTERVAL_S)
    assert [(await generate(p.stub)).cached for _ in range(2)] == [False, True]  # the second from L1
    got = await stats(p.stub)
    assert got.errors == 2 and (got.misses, got.writes, got.l1_hits) == (1, 1, 1)  # read; write skipped


async def test_a_stream_miss_is_stored_and_a_hit_is_served_from_the_cache(api, start):
    api.script(Reply("one two three"))
    p = await start()
    miss = await stream(p.stub)
    assert [c.delta for c in miss] == ["one", " two", " three", ""] and not miss[-1].cached
    hit = await stream(p.stub)
    assert [c.delta for c in hit] == ["one two three", ""]
    assert [c.index for c in hit] == [0, 1] and hit[-1].final and hit[-1].cached
    assert uncached(hit[-1]) == provider_pb2.GenerateStreamResponse(
        index=1, final=True, backend="standin", model="gpt-test", usage=miss[-1].usage,
        finish_reason=miss[-1].finish_reason)
    unary = await generate(p.stub)  # the same key as the stream's
    assert unary.cached and unary.message.content == "one two three"
    assert len(api.requests) == 1


async def test_a_stream_left_early_is_not_stored(api, start):
    api.script(Reply("one two three", chunk_delay_s=1.0))
    p = await start()
    call = p.stub.GenerateStream(provider_pb2.GenerateStreamRequest(messages=[message("what is 2+2?")]),
                                 timeout=5)
    assert (await call.read()).delta == "one"
    call.cancel()
    await asyncio.wait_for(api.requests[0].disconnected.wait(), SEEN)
    assert not (await stream(p.stub))[-1].cached
    assert len(api.requests) == 2
    assert (await stats(p.stub)).writes == 1  # the second, complete stream


def test_the_key_covers_what_shapes_the_reply():
    turns = [Turn("system", "be brief"), Turn("user", "hi")]
    base = dict(backend="b", model="m", turns=turns, tools=(), max_tokens=0, options=CacheOptions())
    key = cache_key(**base)
    assert key == cache_key(**{**base, "turns": [Turn("system", "be brief"), Turn("user", "hi")]})
    assert len(key) == 64 and int(key, 16) >= 0
    variants = [
        {"backend": "c"}, {"model": "n"}, {"max_tokens": 5}, {"turns": turns[1:]},
        {"turns": [*turns, Turn("assistant", "", tool_calls=(ToolCall("1", "f"),))]},
        {"turns": [*turns[:1], Turn("tool", "hi", name="f", tool_call_id="1")]},
        {"tools": [ToolSpec("f", "finds", {"type": "object"})]},
        {"options": CacheOptions(temperature=0.5)}, {"options": CacheOptions(top_p=0.9)},
        {"options": CacheOptions(stop=("\n",))}, {"options": CacheOptions(tenant="acme")},
    ]
    keys = {cache_key(**{**base, **change}) for change in variants}
    assert len(keys) == len(variants) and key not in keys
    # The policy and the session choose whether and how an entry is tagged, not which it is.
    assert cache_key(**{**base, "options": CacheOptions(Policy.OPT_IN, session_id="s")}) == key


async def test_redis_url_becomes_aiocache_endpoint_settings():
    cache = redis_cache("rediss://ann:p%40ss@cache.internal:7000/3", 0.02)
    try:
        assert (cache.endpoint, cache.port, cache.db, cache.password) == ("cache.internal", 7000, 3, "p@ss")
        pool = cache.client.connection_pool.connection_kwargs
        assert (pool["username"], pool["socket_timeout"]) == ("ann", 1.0)  # a backstop: ops are bounded
    finally:
        await cache.client.aclose()


def test_cache_settings_from_the_environment():
    settings = load_settings({"CLAWMESH_PROVIDER__CACHE__REDIS_URL": "redis://redis:6379/1",
                              "CLAWMESH_PROVIDER__CACHE__TTL_S": "60"})
    cache = settings.provider.cache
    assert (cache.enabled, cache.ttl_s, cache.l1_max_entries, cache.redis_url, cache.op_timeout_ms) == (
        True, 60.0, 10_000, "redis://redis:6379/1", 50.0)
    with pytest.raises(SettingsError, match="CLAWMESH_PROVIDER__CACHE__REDIS_URL"):
        load_settings({"CLAWMESH_PROVIDER__CACHE__REDIS_URL": "localhost:6379"})
