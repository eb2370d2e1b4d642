import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from tests.inproc import inproc_mesh

TENANT = (("x-clawmesh-tenant", "acme"),)


def inbound(text, session="s1", key=""):
    return common_pb2.InboundMessage(
        tenant="acme", channel="test", sender="u1", session_id=session, content=text,
        idempotency_key=key,
    )


@pytest.fixture
async def mesh(settings):
    async with inproc_mesh(settings, services=("memory", "provider", "routing")) as servers:
        async with grpc.aio.insecure_channel(servers["routing"].address) as r, \
                grpc.aio.insecure_channel(servers["memory"].address) as m:
            yield routing_pb2_grpc.RoutingServiceStub(r), memory_pb2_grpc.MemoryServiceStub(m)


async def test_dispatch_loads_history_calls_provider_and_stores_the_turn(mesh):
    routing, memory = mesh
    first = await routing.Dispatch(routing_pb2.DispatchRequest(message=inbound("hello", key="k1")),
                                   metadata=TENANT, timeout=5)
    assert first.route.route_name == "default" and first.route.backend == "mock"
    second = await routing.Dispatch(routing_pb2.DispatchRequest(message=inbound("again", key="k2")),
                                    metadata=TENANT, timeout=5)
    assert second.reply.content == 'mock reply 2: you said "again"; 1 earlier turn(s), previously "hello"'
    history = await memory.GetHistory(memory_pb2.GetHistoryRequest(session_id="s1"),
                                      metadata=TENANT, timeout=5)
    assert [(m.role, m.content) for m in history.messages] == [
        (common_pb2.ROLE_USER, "hello"), (common_pb2.ROLE_ASSISTANT, first.reply.content),
        (common_pb2.ROLE_USER, "again"), (common_pb2.ROLE_ASSISTANT, second.reply.content),
    ]
    # Another tenant sees nothing of it.
    other = await memory.GetHistory(memory_pb2.GetHistoryRequest(session_id="s1"),
                                    metadata=(("x-clawmesh-tenant", "other"),), timeout=5)
    assert list(other.messages) == []


async def test_a_retried_message_is_stored_once(mesh):
    routing, memory = mesh
    for _ in range(2):
        await routing.Dispatch(routing_pb2.DispatchRequest(message=inbound("once", key="same")),
                               metadata=TENANT, timeout=5)
    history = await memory.GetHistory(memory_pb2.GetHistoryRequest(session_id="s1"),
                                      metadata=TENANT, timeout=5)
    assert len(history.messages) == 2


async def test_dispatch_stream_chunks_add_up_to_the_stored_reply(mesh):
    routing, memory = mesh
    responses = [r async for r in routing.DispatchStream(
        routing_pb2.DispatchStreamRequest(message=inbound("stream me", session="s2", key="k")),
        metadata=TENANT, timeout=5)]
    assert responses[0].route.backend == "mock"
    assert not any(r.HasField("route") for r in responses[1:])
    final = responses[-1].chunk
    assert final.final and final.reply.content == "".join(r.chunk.delta for r in responses[:-1])
    history = await memory.GetHistory(memory_pb2.GetHistoryRequest(session_id="s2"),
                                      metadata=TENANT, timeout=5)
    assert [m.content for m in history.messages] == ["stream me", final.reply.content]


async def test_explain_calls_nothing(settings):
    # Memory and provider are not running at all: Explain still answers.
    settings.memory.address = settings.provider.address = "127.0.0.1:1"
    async with inproc_mesh(settings, services=("routing",)) as servers:
        async with grpc.aio.insecure_channel(servers["routing"].address) as channel:
            stub = routing_pb2_grpc.RoutingServiceStub(channel)
            reply = await stub.Explain(routing_pb2.ExplainRequest(message=inbound("x")), timeout=5)
            assert (reply.route.backend, reply.route.history_limit) == ("mock", 20)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Dispatch(routing_pb2.DispatchRequest(message=inbound("x")), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
