"""Ingest over real gRPC, with the rest of the mesh running in-process behind it."""

import asyncio

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.services.ingest.core import idempotency_key
from clawmesh.shared.errors import bad_request_fields
from tests.conftest import trailing_status
from tests.inproc import inproc_mesh

REQUEST_PATH = ("memory", "provider", "routing", "ingest")


def inbound(text="hello", session="s1", **kw):
    fields = {"channel": "telegram", "sender": "u1", "session_id": session, "content": text}
    fields.update(kw)
    return common_pb2.InboundMessage(**fields)


@pytest.fixture(params=["stream", "unary"])
async def ingest(request, settings):
    """Ingest's stub, the mesh behind it over either internal transport."""
    settings.internal_transport = request.param
    settings.provider.mock_latency_ms = 0
    async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            yield ingest_pb2_grpc.IngestServiceStub(channel)


async def test_submit_answers_with_memory_of_the_session(ingest):
    for text in ("first", "second"):
        response = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(text)), timeout=5)
    reply = response.reply
    assert reply.content == 'mock reply 2: you said "second"; 1 earlier turn(s), previously "first"'
    assert reply.session_id == "s1" and len(reply.request_id) == 32
    assert reply.backend == "mock" and reply.usage.total_tokens > 0


async def test_request_id_from_the_caller_is_kept(ingest):
    response = await ingest.Submit(
        ingest_pb2.SubmitRequest(message=inbound()),
        metadata=(("x-clawmesh-request-id", "req-123"),), timeout=5,
    )
    assert response.reply.request_id == "req-123"


async def test_tenants_are_separate_conversations(ingest):
    await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("a")),
                        metadata=(("x-clawmesh-tenant", "t1"),), timeout=5)
    other = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("b")),
                                metadata=(("x-clawmesh-tenant", "t2"),), timeout=5)
    assert "0 earlier turn(s)" in other.reply.content


async def test_message_tenant_must_match_the_callers(ingest):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(tenant="t2")),
                            metadata=(("x-clawmesh-tenant", "t1"),), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


BAD_INPUT = [
    (inbound(text=""), ["message.content"]),
    (inbound(text="   "), ["message.content"]),
    (inbound(text="x" * (32 * 1024 + 1)), ["message.content"]),
    (inbound(session=""), ["message.session_id"]),
    (inbound(session="s" * 257), ["message.session_id"]),
    (inbound(priority=9), ["message.priority"]),
    (inbound(channel="", sender=""), ["message.channel", "message.sender"]),
    (inbound(channel_message_id="i" * 300), ["message.channel_message_id"]),
    (None, ["message"]),
]


@pytest.mark.parametrize("message, fields", BAD_INPUT)
async def test_bad_input_is_invalid_argument_naming_the_field(ingest, message, fields):
    request = ingest_pb2.SubmitRequest(message=message) if message else ingest_pb2.SubmitRequest()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.Submit(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(trailing_status(err.value)) == fields
    # The service keeps serving.
    ok = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(session="after")), timeout=5)
    assert ok.reply.content.startswith("mock reply 1")


async def test_limits_are_configurable(settings):
    settings.ingest.max_content_bytes = 10
    async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Submit(ingest_pb2.SubmitRequest(message=inbound("eleven char")), timeout=5)
            assert "at most 10 allowed" in err.value.details()


async def test_undecodable_bytes_are_invalid_argument_and_nothing_breaks(ingest, settings):
    channel = grpc.aio.insecure_channel(settings.ingest.target())
    raw = channel.unary_unary("/clawmesh.ingest.v1.IngestService/Submit")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff", timeout=5)
    # The server factory answers a body that does not decode itself (shared/rpc/server.py), not
    # gRPC with UNKNOWN and a traceback logged per call.
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Wire format was corrupt" in err.value.details()
    assert bad_request_fields(trailing_status(err.value)) == ["request"]
    await channel.close()
    assert (await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound()), timeout=5)).reply.content


async def test_submit_stream_delivers_chunks_then_the_full_reply(ingest):
    chunks = [r.chunk async for r in ingest.SubmitStream(
        ingest_pb2.SubmitStreamRequest(message=inbound("stream")), timeout=5)]
    assert chunks[-1].final
    assert "".join(c.delta for c in chunks[:-1]) == chunks[-1].reply.content


async def test_converse_answers_each_message_and_reports_bad_ones_in_band(ingest):
    requests = [
        ingest_pb2.ConverseRequest(message=inbound(f"m{i}", session=f"c{i}", channel_message_id=f"id{i}"))
        for i in range(5)
    ]
    requests.insert(2, ingest_pb2.ConverseRequest(message=inbound(""), correlation_id="bad-one"))
    responses = [r async for r in ingest.Converse(iter(requests), timeout=10)]
    by_id = {r.correlation_id: r for r in responses}
    assert set(by_id) == {"id0", "id1", "id2", "id3", "id4", "bad-one"}
    assert by_id["bad-one"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "message.content" in by_id["bad-one"].error.message
    assert by_id["bad-one"].error.details[0].TypeName() == "google.rpc.BadRequest"
    for i in range(5):
        assert by_id[f"id{i}"].reply.content == f'mock reply 1: you said "m{i}"; 0 earlier turn(s)'


async def test_converse_replies_complete_out_of_order(settings):
    # A needs the provider (300 ms); B is rejected at the edge at once, so B's
    # answer must overtake A's on the same stream.
    settings.provider.mock_latency_ms = 300
    async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            call = stub.Converse(timeout=10)
            await call.write(ingest_pb2.ConverseRequest(message=inbound("a"), correlation_id="A"))
            await call.write(ingest_pb2.ConverseRequest(message=inbound(""), correlation_id="B"))
            await call.done_writing()
            first, second = await call.read(), await call.read()
            assert (first.correlation_id, first.WhichOneof("result")) == ("B", "error")
            assert (second.correlation_id, second.WhichOneof("result")) == ("A", "reply")
            assert await call.read() == grpc.aio.EOF


async def test_deadline_is_propagated_downstream(settings):
    settings.provider.mock_latency_ms = 2000
    async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Submit(ingest_pb2.SubmitRequest(message=inbound()), timeout=0.3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert loop.time() - started < 1.5


def test_idempotency_key_is_scoped_to_tenant_channel_and_session():
    key = idempotency_key(inbound(tenant="t", channel_message_id="42"), "r1")
    # The platform's id makes a redelivery the same message, whatever else differs.
    assert key == idempotency_key(inbound("other", tenant="t", channel_message_id="42"), "r2")
    for other in (dict(tenant="t2"), dict(tenant="t", channel="discord"),
                  dict(tenant="t", session="s2")):
        assert key != idempotency_key(inbound(channel_message_id="42", **other), "r1"), other
    caller = idempotency_key(inbound(tenant="t", idempotency_key="k"), "r1")
    assert caller == idempotency_key(inbound(tenant="t", idempotency_key="k"), "r2")
    assert caller != idempotency_key(inbound(tenant="t", session="s2", idempotency_key="k"), "r1")


def test_content_alone_never_makes_two_messages_the_same():
    assert idempotency_key(inbound("yes", tenant="t"), "r1") != idempotency_key(
        inbound("yes", tenant="t"), "r2")


async def test_saying_yes_twice_stores_both_turns(ingest):
    for _ in range(2):
        await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("yes")), timeout=5)
    third = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("and?")), timeout=5)
    assert "2 earlier turn(s)" in third.reply.content, third.reply.content


async def test_same_channel_message_id_in_two_sessions_is_two_messages(ingest):
    for session in ("chat-1", "chat-2"):
        response = await ingest.Submit(ingest_pb2.SubmitRequest(
            message=inbound("hi", session=session, channel_message_id="1")), timeout=5)
        assert response.reply.session_id == session
        assert "0 earlier turn(s)" in response.reply.content


async def test_submit_returns_the_request_id_in_its_metadata(ingest):
    call = ingest.Submit(ingest_pb2.SubmitRequest(message=inbound()), timeout=5)
    response = await call
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-clawmesh-request-id"] == response.reply.request_id
    assert len(response.reply.request_id) == 32
