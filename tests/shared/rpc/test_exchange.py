"""Logical calls on Exchange streams, against a real server and a real channel.

A controllable ProviderService (its contract declares Exchange) is served by the
real server factory and interceptor chain; the client is the real
ExchangeTransport under the typed ProviderClient.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.client import ProviderClient
from clawmesh.shared import context as callctx
from clawmesh.shared.errors import InvalidArgument, bad_request_fields
from clawmesh.shared.rpc.client import UnaryTransport
from clawmesh.shared.rpc.exchange_client import ExchangeTransport
from clawmesh.shared.rpc.interceptors import client_chain, server_chain
from clawmesh.shared.rpc.server import create_server
from clawmesh.shared.rpcstats import RpcStats
from clawmesh.shared.settings import ServerSettings
from tests.conftest import trailing_status

SERVICE = "clawmesh.provider.v1.ProviderService"


class Provider(provider_pb2_grpc.ProviderServiceServicer):
    """Answers with what it saw; 'bad' fails, 'hold' waits until released or cancelled."""

    def __init__(self, name: str = "p") -> None:
        self.name = name
        self.calls = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def Generate(self, request, context):
        self.calls += 1
        text = request.messages[-1].content if request.messages else ""
        if text == "bad":
            raise InvalidArgument("messages", "must not say bad")
        if text == "hold":
            self.holding.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        info = callctx.current()
        seen = f"{self.name}|{text}|{info.tenant}|{info.request_id}"
        return provider_pb2.GenerateResponse(message=common_pb2.ChatMessage(content=seen))

    async def GenerateStream(self, request, context):
        for i in range(3):
            if request.messages[-1].content == "bad" and i == 2:
                raise InvalidArgument("messages", "bad at 2")
            yield provider_pb2.GenerateStreamResponse(delta=str(i), index=i)
        yield provider_pb2.GenerateStreamResponse(index=3, final=True)


def request(text: str) -> provider_pb2.GenerateRequest:
    return provider_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(content=text)])


async def start(servicer, stats=None):
    server = create_server(ServerSettings(port=0, grace_period_s=1),
                           [(provider_pb2_grpc.add_ProviderServiceServicer_to_server, servicer)],
                           [SERVICE], server_chain(stats))
    await server.start()
    return server


@pytest.fixture
async def served():
    servicer, stats = Provider(), RpcStats()
    server = await start(servicer, stats)
    channel = grpc.aio.insecure_channel(server.address)
    transport = ExchangeTransport(channel, SERVICE, streams=2)
    client = ProviderClient(transport, client_chain(5.0, 5.0))
    yield servicer, client, transport, stats
    await transport.close()
    await channel.close()
    await server.stop(0)


async def test_unary_and_stream_calls_answer_like_rpcs(served):
    servicer, client, transport, stats = served
    got = await client.generate(request("hi"))
    assert got.message.content == "p|hi||"
    chunks = [c async for c in client.generate_stream(request("hi"))]
    assert [c.delta for c in chunks] == ["0", "1", "2", ""] and chunks[-1].final
    # The server chain counted the logical calls, by method, like RPCs.
    counts = {(s.method, s.code): s.count for s in stats.snapshot()}
    assert counts == {(f"/{SERVICE}/Generate", 0): 1, (f"/{SERVICE}/GenerateStream", 0): 1}


async def test_metadata_and_errors_with_details_travel_like_an_rpc(served):
    _, client, _, _ = served
    got = await client.unary("Generate", request("x"), {"x-clawmesh-tenant": "acme",
                                                          "x-clawmesh-request-id": "r-1"})
    assert got.message.content == "p|x|acme|r-1"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.generate(request("bad"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must not say bad" in err.value.details()
    assert bad_request_fields(trailing_status(err.value)) == ["messages"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [c async for c in client.generate_stream(request("bad"))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_many_concurrent_calls_share_few_writes(served):
    _, client, transport, _ = served
    replies = await asyncio.gather(*(client.generate(request(str(i))) for i in range(200)))
    assert [r.message.content for r in replies] == [f"p|{i}||" for i in range(200)]
    # Calls started in one turn of the loop share one stream and one write ...
    assert transport.open_streams() == 1
    assert sum(s.writes for s in transport.slots if s) == 1
    # ... and the next turns move on round-robin.
    for i in range(3):
        await client.generate(request(str(i)))
    assert transport.open_streams() == 2


async def test_deadline_ends_the_call_on_both_sides(served):
    servicer, client, _, _ = served
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = asyncio.ensure_future(client.transport.unary(client.call_for("Generate", request("hold"))))
    await servicer.holding.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The CANCEL frame reaches the server: its handler is cancelled.
    while servicer.cancelled < 1:
        assert loop.time() - started < 5
        await asyncio.sleep(0.01)
    servicer.holding.clear()
    short = ProviderClient(client.transport, client_chain(0.2, 0.0))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await short.generate(request("hold"))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    while servicer.cancelled < 2:  # the server enforced the deadline too
        assert loop.time() - started < 5
        await asyncio.sleep(0.01)
    assert (await client.generate(request("after"))).message.content == "p|after||"


async def test_unknown_method_is_unimplemented_and_the_stream_goes_on(served):
    _, client, transport, _ = served
    from clawmesh.shared.rpc.client import Call

    bogus = Call(f"/{SERVICE}/Nope", request("x"), provider_pb2.GenerateResponse, timeout=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await transport.unary(bogus)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (await client.generate(request("ok"))).message.content == "p|ok||"


async def test_server_gone_fails_open_calls_unavailable_then_reconnects():
    servicer = Provider()
    server = await start(servicer)
    port = server.port
    channel = grpc.aio.insecure_channel(server.address)
    transport = ExchangeTransport(channel, SERVICE, streams=1)
    client = ProviderClient(transport, client_chain(5.0, 0.0))
    try:
        held = asyncio.ensure_future(client.generate(request("hold")))
        await servicer.holding.wait()
        await server.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await held
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        restarted = create_server(ServerSettings(port=port, grace_period_s=1),
                                  [(provider_pb2_grpc.add_ProviderServiceServicer_to_server,
                                    Provider("again"))], [SERVICE], server_chain())
        await restarted.start()
        try:
            for _ in range(50):  # the channel reconnects within its 1 s backoff cap
                try:
                    got = await client.generate(request("hi"))
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.05)
            assert got.message.content == "again|hi||"
        finally:
            await restarted.stop(0)
    finally:
        await transport.close()
        await channel.close()


async def test_streams_spread_over_every_replica_and_rotate_by_age():
    a, b = Provider("a"), Provider("b")
    servers = [await start(a), await start(b)]
    now = [0.0]
    target = "ipv4:" + ",".join(s.address for s in servers)
    channel = grpc.aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
    transport = ExchangeTransport(channel, SERVICE, streams=4, max_age_s=10, clock=lambda: now[0])
    client = ProviderClient(transport, client_chain(5.0, 0.0))
    try:
        await channel.channel_ready()
        for i in range(40):
            await client.generate(request(str(i)))
        assert a.calls > 0 and b.calls > 0, (a.calls, b.calls)
        first = list(transport.slots)
        now[0] = 11.0  # past max age: new calls open new streams, old ones close
        for i in range(8):
            await client.generate(request(str(i)))
        assert all(s not in first for s in transport.slots)
        for old in first:
            await asyncio.wait_for(asyncio.shield(old.reader), 2)
            assert old.dead is not None
    finally:
        await transport.close()
        await channel.close()
        for server in servers:
            await server.stop(0)


async def test_unary_transport_is_interchangeable(served):
    servicer, _, transport, _ = served
    channel = transport.channel
    client = ProviderClient(UnaryTransport(channel), client_chain(5.0, 0.0))
    got = await client.unary("Generate", request("u"), {"x-clawmesh-tenant": "t"})
    assert got.message.content == "p|u|t|"


async def test_graceful_stop_drains_streams_without_failing_a_call():
    servicer = Provider()
    server = await start(servicer)
    channel = grpc.aio.insecure_channel(server.address)
    transport = ExchangeTransport(channel, SERVICE, streams=1)
    client = ProviderClient(transport, client_chain(5.0, 0.0))
    loop = asyncio.get_running_loop()
    try:
        await client.generate(request("warm"))  # the stream is open
        held = asyncio.ensure_future(client.generate(request("hold")))
        await servicer.holding.wait()
        started = loop.time()
        stopping = asyncio.ensure_future(server.stop(30))
        while not transport.slots[0].draining:  # the GOAWAY frame arrived
            assert loop.time() - started < 5
            await asyncio.sleep(0.01)
        servicer.release.set()
        assert (await held).message.content == "p|hold||"  # the open call finished
        await stopping
        # The stream closed when its last call ended: no wait for the 30 s grace.
        assert loop.time() - started < 5
        with pytest.raises(grpc.aio.AioRpcError) as err:  # new calls: no server here
            await client.generate(request("late"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await transport.close()
        await channel.close()
        await server.stop(0)


async def test_bad_frames_get_a_status_and_the_stream_goes_on(served):
    _, client, transport, _ = served
    from clawmesh.common.v1 import exchange_pb2
    from clawmesh.shared.rpc.exchange_server import END, MESSAGE, REQUEST

    raw = transport.channel.stream_stream(
        f"/{SERVICE}/Exchange",
        request_serializer=provider_pb2.ExchangeRequest.SerializeToString,
        response_deserializer=provider_pb2.ExchangeResponse.FromString,
    )()
    good = request("fine").SerializeToString()
    frames = [
        exchange_pb2.Frame(call_id=0, kind=REQUEST, method=f"/{SERVICE}/Generate", payload=good),
        exchange_pb2.Frame(call_id=5, kind=MESSAGE),
        exchange_pb2.Frame(call_id=6, kind=REQUEST, method=f"/{SERVICE}/Generate", payload=b"\xff\xff"),
        exchange_pb2.Frame(call_id=7, kind=REQUEST, method=f"/{SERVICE}/Generate", payload=good),
    ]
    await raw.write(provider_pb2.ExchangeRequest(frames=frames))
    await raw.done_writing()
    ends = {}
    async for response in raw:
        for frame in response.frames:
            assert frame.kind == END
            ends[frame.call_id] = frame
    assert ends[0].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "call_id" in ends[0].status.message
    assert ends[5].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ends[6].status.code == grpc.StatusCode.INTERNAL.value[0]  # as gRPC: undecodable bytes
    assert ends[7].status.code == 0
    assert provider_pb2.GenerateResponse.FromString(ends[7].payload).message.content == "p|fine||"
    assert (await client.generate(request("after"))).message.content == "p|after||"


@pytest.mark.parametrize("transport_kind", ["stream", "unary"])
async def test_a_call_arriving_with_too_little_time_is_refused_before_its_handler(transport_kind):
    servicer = Provider()
    server = create_server(ServerSettings(port=0, grace_period_s=1),
                           [(provider_pb2_grpc.add_ProviderServiceServicer_to_server, servicer)],
                           [SERVICE], server_chain(None, min_budget_ms=200.0))
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    transport = (ExchangeTransport(channel, SERVICE, streams=1) if transport_kind == "stream"
                 else UnaryTransport(channel))
    try:
        # At most 150 ms left on arrival; the server needs 200 ms: it refuses at once, by its own rule.
        tight = ProviderClient(transport, client_chain(0.15, 0.0))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tight.generate(request("hi"))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "arrived with" in info.value.details() and "at least 200 ms" in info.value.details()
        assert servicer.calls == 0  # the handler never ran
        ok = ProviderClient(transport, client_chain(5.0, 0.0))
        assert (await ok.generate(request("hi"))).message.content.startswith("p|hi|")
        assert servicer.calls == 1
    finally:
        await transport.close()
        await channel.close()
        await server.stop(0)
