"""The server factory and interceptor chain, with a real server on port 0 and a real channel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clawmesh.shared import context as callctx
from clawmesh.shared.errors import InvalidArgument, bad_request_fields
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import create_server
from clawmesh.shared.rpcstats import RpcStats
from clawmesh.shared.settings import ServerSettings
from clawmesh.testing.v1 import echo_pb2, echo_pb2_grpc
from tests.conftest import trailing_status

SERVICE = "clawmesh.testing.v1.EchoService"


class Echo(echo_pb2_grpc.EchoServiceServicer):
    """Fails on purpose for some inputs; otherwise echoes."""

    def __init__(self):
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.seen: list[str] = []

    async def Echo(self, request, context):
        self.seen.append(request.message)
        if request.message == "bad":
            raise InvalidArgument("message", "must not be 'bad'")
        if request.message == "bug":
            raise RuntimeError("boom")
        if request.message == "tenant":
            return echo_pb2.EchoResponse(message=callctx.current().tenant)
        if request.message == "wait":
            self.started.set()
            await self.release.wait()
        return echo_pb2.EchoResponse(message=request.message)

    async def ServerStream(self, request, context):
        for i in range(request.count):
            if request.message == "bad" and i == 2:
                raise InvalidArgument("count", "too many")
            yield echo_pb2.ServerStreamResponse(message=request.message, index=i)

    async def Chat(self, request_iterator, context):
        async for req in request_iterator:
            yield echo_pb2.ChatResponse(message=req.message)


@pytest.fixture
async def echo_server():
    stats = RpcStats()
    servicer = Echo()
    server = create_server(
        ServerSettings(port=0, grace_period_s=5),
        [(echo_pb2_grpc.add_EchoServiceServicer_to_server, servicer)],
        [SERVICE],
        server_chain(stats),
    )
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    yield server, channel, servicer, stats
    await channel.close()
    await server.stop(0)


def _counts(stats: RpcStats) -> dict[tuple[str, int], int]:
    return {(s.method, s.code): s.count for s in stats.snapshot()}


async def test_health_is_serving_per_service_and_reflection_lists_it(echo_server):
    server, channel, _, _ = echo_server
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in call:
        names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_reflection_v1_answers_like_v1alpha(echo_server):
    """Clients that speak grpc.reflection.v1 (same protocol, other package) are served."""
    _, channel, _, _ = echo_server
    v1 = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection")]
    responses = [r async for r in v1(iter(requests), timeout=2)]
    assert SERVICE in {s.name for s in responses[0].list_services_response.service}
    assert responses[1].file_descriptor_response.file_descriptor_proto
    assert responses[2].file_descriptor_response.file_descriptor_proto, responses[2]


async def test_domain_error_becomes_status_with_details_and_server_keeps_serving(echo_server):
    _, channel, _, stats = echo_server
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Echo(echo_pb2.EchoRequest(message="bad"), timeout=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(trailing_status(err.value)) == ["message"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Echo(echo_pb2.EchoRequest(message="bug"), timeout=2)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert (await stub.Echo(echo_pb2.EchoRequest(message="ok"), timeout=2)).message == "ok"
    counts = _counts(stats)
    method = f"/{SERVICE}/Echo"
    assert counts[(method, 3)] == 1 and counts[(method, 13)] == 1 and counts[(method, 0)] == 1


async def test_stream_error_mid_stream_is_mapped(echo_server):
    _, channel, _, _ = echo_server
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        request = echo_pb2.ServerStreamRequest(message="bad", count=5)
        async for r in stub.ServerStream(request, timeout=2):
            got.append(r.index)
    assert got == [0, 1]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    chat = stub.Chat(iter([echo_pb2.ChatRequest(message=m) for m in "abc"]), timeout=2)
    assert [r.message async for r in chat] == ["a", "b", "c"]


async def test_call_context_sees_the_callers_metadata(echo_server):
    _, channel, _, _ = echo_server
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    reply = await stub.Echo(
        echo_pb2.EchoRequest(message="tenant"), metadata=(("x-clawmesh-tenant", "acme"),), timeout=2
    )
    assert reply.message == "acme"


async def test_stop_drains_in_flight_refuses_new_and_reports_not_serving(echo_server):
    server, channel, servicer, _ = echo_server
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    in_flight = asyncio.ensure_future(stub.Echo(echo_pb2.EchoRequest(message="wait"), timeout=10))
    await servicer.started.wait()
    stopping = asyncio.ensure_future(server.stop())
    # Health flips before the listener closes (a few loop turns into stop()).
    probe = health_pb2.HealthCheckRequest(service=SERVICE)
    for _ in range(50):
        status = (await server.health.Check(probe, None)).status
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Echo(echo_pb2.EchoRequest(message="new"), timeout=2)
    # On a connection already open, gRPC core refuses a call during shutdown with
    # CANCELLED or UNAVAILABLE depending on whether GOAWAY went out yet; either way
    # the handler never sees it.
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert "new" not in servicer.seen
    servicer.release.set()
    assert (await in_flight).message == "wait"
    await stopping
