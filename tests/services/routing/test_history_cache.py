"""Routing's history cache is never stale: two routing replicas share one session.

Real servers in-process (memory, provider, two routing replicas), real channels
over both internal transports. The mock backend's reply names how many earlier
user turns it saw and the last one, so every reply proves which history the
model got.
"""

from __future__ import annotations

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from clawmesh.services.registry import by_name
from clawmesh.services.routing.history import HistoryCache
from tests.inproc import inproc_mesh

TENANT = (("x-clawmesh-tenant", "acme"),)


def inbound(text: str, key: str, session: str = "s1") -> common_pb2.InboundMessage:
    return common_pb2.InboundMessage(tenant="acme", channel="t", sender="u", session_id=session,
                                     content=text, idempotency_key=key)


@pytest.fixture(params=["stream", "unary"])
async def replicas(request, settings):
    settings.internal_transport = request.param
    async with inproc_mesh(settings, services=("memory", "provider")) as servers:
        routers = [await by_name("routing").build(settings) for _ in range(2)]
        for server in routers:
            await server.start()
        channels = [grpc.aio.insecure_channel(s.address) for s in (*routers, servers["memory"])]
        try:
            yield ([routing_pb2_grpc.RoutingServiceStub(c) for c in channels[:2]],
                   memory_pb2_grpc.MemoryServiceStub(channels[2]))
        finally:
            for c in channels:
                await c.close()
            for server in routers:
                await server.stop(0)


async def say(router, text: str, key: str, session: str = "s1") -> str:
    response = await router.Dispatch(routing_pb2.DispatchRequest(message=inbound(text, key, session)),
                                     metadata=TENANT, timeout=5)
    return response.reply.content


async def test_alternating_replicas_always_see_the_whole_history(replicas):
    (a, b), _ = replicas
    assert "0 earlier" in await say(a, "one", "k1")
    assert await say(b, "two", "k2") == \
        'mock reply 2: you said "two"; 1 earlier turn(s), previously "one"'
    # a has a cached entry from "one"; b wrote since: a must see "two".
    assert await say(a, "three", "k3") == \
        'mock reply 3: you said "three"; 2 earlier turn(s), previously "two"'
    assert await say(a, "four", "k4") == \
        'mock reply 4: you said "four"; 3 earlier turn(s), previously "three"'


async def test_a_write_from_outside_and_a_recreated_session_are_seen(replicas):
    (a, _), memory = replicas
    await say(a, "one", "k1")
    await memory.BatchAppend(memory_pb2.BatchAppendRequest(session_id="s1", idempotency_key="x", messages=[
        common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="from a tool")]),
        metadata=TENANT, timeout=5)
    assert 'previously "from a tool"' in await say(a, "two", "k2")
    # Delete and recreate with as many messages: same sequences, another epoch.
    await memory.DeleteSession(memory_pb2.DeleteSessionRequest(session_id="s1"), metadata=TENANT,
                               timeout=5)
    for i in range(5):
        await memory.BatchAppend(memory_pb2.BatchAppendRequest(
            session_id="s1", idempotency_key=f"n{i}",
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"new {i}")]),
            metadata=TENANT, timeout=5)
    assert await say(a, "three", "k3") == \
        'mock reply 6: you said "three"; 5 earlier turn(s), previously "new 4"'


class FakeMemory:
    """Counts what the cache asks; answers from a list (unit level, no gRPC)."""

    def __init__(self):
        self.messages: list[common_pb2.ChatMessage] = []
        self.epoch = 7
        self.asked: list[int] = []

    async def history(self, session_id, limit=0, after_sequence=0, token_budget=0):
        self.asked.append(after_sequence)
        new = self.messages[after_sequence:]
        return memory_pb2.GetHistoryResponse(
            messages=new[-limit:], total_messages=len(self.messages),
            truncated=len(new) > limit, last_sequence=len(self.messages),
            session_epoch=self.epoch if self.messages else 0)


def msg(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)


async def test_cache_asks_only_for_what_is_new_and_stays_bounded():
    memory = FakeMemory()
    memory.messages = [msg(str(i)) for i in range(4)]
    now = [0.0]
    cache = HistoryCache(max_sessions=2, ttl_s=10, clock=lambda: now[0])
    assert [m.content for m in await cache.load(memory, "t", "s", 3)] == ["1", "2", "3"]
    memory.messages.append(msg("4"))
    assert [m.content for m in await cache.load(memory, "t", "s", 3)] == ["2", "3", "4"]
    assert memory.asked == [0, 4] and cache.hits == 1 and cache.misses == 1
    # Our own append right after the cached sequence extends the entry.
    turn = [msg("5"), msg("6")]
    memory.messages += turn
    cache.appended("t", "s", turn, memory_pb2.BatchAppendResponse(sequences=[6, 7], session_epoch=7), 3)
    assert [m.content for m in await cache.load(memory, "t", "s", 3)] == ["4", "5", "6"]
    assert memory.asked[-1] == 7
    # More new messages than the window: the new ones replace the entry.
    memory.messages += [msg(f"n{i}") for i in range(5)]
    assert [m.content for m in await cache.load(memory, "t", "s", 3)] == ["n2", "n3", "n4"]
    # Bounded by count and by idle time.
    for s in ("s2", "s3"):
        await cache.load(memory, "t", s, 3)
    assert len(cache) == 2
    now[0] = 100.0
    assert len(cache) == 0


async def test_append_that_does_not_follow_the_entry_drops_it():
    memory = FakeMemory()
    memory.messages = [msg("a")]
    cache = HistoryCache()
    await cache.load(memory, "t", "s", 5)
    cache.appended("t", "s", [msg("x")], memory_pb2.BatchAppendResponse(sequences=[3], session_epoch=7), 5)
    assert len(cache) == 0
