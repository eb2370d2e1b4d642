"""One trace per message through the mesh in-process (real servers, real channels, both
transports): the trace id trailer, and the decisions each service notes on its span."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.trace import SpanKind

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from tests.inproc import inproc_mesh
from tests.spans import recorded_spans, wait_for_spans

REQUEST_PATH = ("memory", "provider", "routing", "ingest")
TENANT = (("x-clawmesh-tenant", "acme"),)
INGEST = "clawmesh.ingest.v1.IngestService"
ROUTING = "clawmesh.routing.v1.RoutingService"
MEMORY = "clawmesh.memory.v1.MemoryService"
PROVIDER = "clawmesh.provider.v1.ProviderService"


def inbound(text="hello", msg_id="", session="s1"):
    return common_pb2.InboundMessage(channel="telegram", sender="u1", session_id=session,
                                     content=text, channel_message_id=msg_id)


@pytest.fixture(params=["stream", "unary"])
async def traced(request, settings, tmp_path):
    """Ingest's stub and the span exporter; one never-refusing rate limit in the policy."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("rate_limits: {rules: [{match: {tenant: '*'}, "
                      "limits: [{name: tenant-burst, rate: 1000, burst: 1000}]}]}\n")
    settings.ingest.policy_file = policy
    settings.internal_transport = request.param
    with recorded_spans() as spans:
        async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
            async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
                yield ingest_pb2_grpc.IngestServiceStub(channel), spans


def server_spans(spans, trace_id: str) -> dict[str, list]:
    """The trace's SERVER spans by rpc.service."""
    out: dict[str, list] = {}
    for span in spans.get_finished_spans():
        if format(span.context.trace_id, "032x") == trace_id and span.kind is SpanKind.SERVER:
            out.setdefault(span.attributes["rpc.service"], []).append(span)
    return out


async def test_submit_is_one_trace_through_every_service_and_returns_its_id(traced):
    ingest, spans = traced
    call = ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id="m-1")), metadata=TENANT,
                         timeout=5)
    response = await call
    trailing = dict(await call.trailing_metadata())
    trace_id = trailing["x-clawmesh-trace-id"]
    assert len(trace_id) == 32
    await wait_for_spans(spans, 1, lambda s: s.name == f"{INGEST}/Submit")
    by_service = server_spans(spans, trace_id)
    assert set(by_service) == {INGEST, ROUTING, MEMORY, PROVIDER}
    [edge] = by_service[INGEST]
    request_id = response.reply.request_id
    assert edge.parent is None  # the caller sent no trace context: ingest starts the trace
    assert edge.attributes["clawmesh.request_id"] == request_id == trailing["x-clawmesh-request-id"]
    assert edge.attributes["clawmesh.tenant"] == "acme"
    assert edge.attributes["clawmesh.ratelimit"] == "allowed"
    assert edge.attributes["clawmesh.ratelimit.limit"] == "tenant-burst"
    assert edge.attributes["clawmesh.dedup"] == "new"
    assert edge.attributes["clawmesh.admission"] == "admitted"
    # The request id is on every server span of the message (the metrics service indexes it).
    assert all(s.attributes["clawmesh.request_id"] == request_id for ss in by_service.values() for s in ss)
    [route] = by_service[ROUTING]
    assert route.attributes["clawmesh.route"] == "default"
    assert route.attributes["clawmesh.route.backend"] == "mock"
    [generate] = by_service[PROVIDER]
    assert generate.attributes["clawmesh.backend"] == "mock"
    assert generate.attributes["gen_ai.response.model"] == "mock-1"
    assert generate.attributes["gen_ai.usage.input_tokens"] > 0
    assert generate.attributes["gen_ai.usage.output_tokens"] == response.reply.usage.completion_tokens
    # Each hop's client span sits between the caller's server span and the callee's.
    finished = spans.get_finished_spans()
    clients = {s.context.span_id: s for s in finished if s.kind is SpanKind.CLIENT}
    parent = clients[route.parent.span_id]
    assert parent.parent.span_id == edge.context.span_id and parent.name == f"{ROUTING}/Dispatch"


async def test_a_replayed_copy_is_its_own_trace_marked_replayed(traced):
    ingest, spans = traced
    ids = []
    for _ in range(2):
        call = ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id="m-2")), metadata=TENANT,
                             timeout=5)
        await call
        ids.append(dict(await call.trailing_metadata())["x-clawmesh-trace-id"])
    assert ids[0] != ids[1]
    await wait_for_spans(spans, 2, lambda s: s.name == f"{INGEST}/Submit")
    replay = server_spans(spans, ids[1])
    assert set(replay) == {INGEST}  # answered at the edge
    assert replay[INGEST][0].attributes["clawmesh.dedup"] == "replayed"


async def test_a_rate_limit_refusal_is_on_the_span(settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rate_limits: {rules: [{match: {tenant: '*'}, "
                      "limits: [{name: one-a-minute, rate: 1, per: minute, burst: 1}]}]}\n")
    settings.ingest.policy_file = policy
    with recorded_spans() as spans:
        async with inproc_mesh(settings, services=REQUEST_PATH) as servers:
            async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
                ingest = ingest_pb2_grpc.IngestServiceStub(channel)
                await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound()), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("again")), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trace_id = dict(err.value.trailing_metadata())["x-clawmesh-trace-id"]
        [edge] = server_spans(spans, trace_id)[INGEST]
    assert edge.attributes["clawmesh.ratelimit"] == "refused"
    assert edge.attributes["clawmesh.ratelimit.limit"] == "one-a-minute"
    assert edge.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "clawmesh.admission" not in edge.attributes


async def test_submit_stream_returns_its_trace_id_as_a_trailer(traced):
    ingest, spans = traced
    call = ingest.SubmitStream(ingest_pb2.SubmitStreamRequest(message=inbound("stream it")),
                               metadata=TENANT, timeout=5)
    chunks = [r.chunk async for r in call]
    assert chunks[-1].final
    trace_id = dict(await call.trailing_metadata())["x-clawmesh-trace-id"]
    await wait_for_spans(spans, 1, lambda s: s.name == f"{INGEST}/SubmitStream")
    by_service = server_spans(spans, trace_id)
    assert set(by_service) == {INGEST, ROUTING, MEMORY, PROVIDER}
    assert by_service[PROVIDER][0].name == f"{PROVIDER}/GenerateStream"
    assert by_service[INGEST][0].attributes["clawmesh.request_id"] == chunks[-1].reply.request_id


async def test_each_converse_message_is_a_trace_of_its_own_linked_to_the_stream(traced):
    ingest, spans = traced
    requests = [ingest_pb2.ConverseRequest(correlation_id=f"c{i}", message=inbound(f"m{i}", f"id-{i}"))
                for i in range(2)]
    answers = [r async for r in ingest.Converse(iter(requests), metadata=TENANT, timeout=5)]
    assert sorted(a.correlation_id for a in answers) == ["c0", "c1"]
    stream = (await wait_for_spans(spans, 1, lambda s: s.name == f"{INGEST}/Converse"
                                   and not s.links))[0]
    messages = await wait_for_spans(spans, 2, lambda s: s.name == f"{INGEST}/Converse" and s.links)
    assert len({m.context.trace_id for m in messages}) == 2
    assert {a.reply.request_id for a in answers} == {m.attributes["clawmesh.request_id"] for m in messages}
    for message in messages:
        assert message.parent is None and message.links[0].context.span_id == stream.context.span_id
        assert message.attributes["clawmesh.dedup"] == "new"
        by_service = server_spans(spans, format(message.context.trace_id, "032x"))
        assert set(by_service) == {INGEST, ROUTING, MEMORY, PROVIDER}
