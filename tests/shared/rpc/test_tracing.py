"""Spans from the tracing interceptors, against real grpc.aio servers and channels.

Two ProviderService servers: a relay that calls a leaf through a typed client (as routing
calls provider), over either transport. Spans land in an in-memory exporter through a
provider installed in ``shared.tracing`` before the chains are built (``tests.spans``).
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.client import ProviderClient
from clawmesh.shared import context as callctx
from clawmesh.shared import tracing
from clawmesh.shared.errors import InvalidArgument, Unavailable
from clawmesh.shared.logs import JsonFormatter
from clawmesh.shared.rpc.client import UnaryTransport
from clawmesh.shared.rpc.exchange_client import ExchangeTransport
from clawmesh.shared.rpc.interceptors import client_chain, server_chain
from clawmesh.shared.rpc.interceptors.tracing import TracingClientInterceptor, TracingServerInterceptor
from clawmesh.shared.rpc.server import create_server
from clawmesh.shared.settings import MeshSettings, ServerSettings, SettingsError
from tests.spans import recorded_spans, wait_for_spans

SERVICE = "clawmesh.provider.v1.ProviderService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    with recorded_spans() as exporter:
        yield exporter


class Leaf(provider_pb2_grpc.ProviderServiceServicer):
    """'bad': INVALID_ARGUMENT, 'down': UNAVAILABLE, 'bug': an unexpected exception."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def Generate(self, request, context):
        self.seen.append(dict(callctx.current().headers))
        text = request.messages[-1].content
        if text == "bad":
            raise InvalidArgument("messages", "must not say bad")
        if text == "down":
            raise Unavailable("backend down")
        if text == "bug":
            raise RuntimeError("a bug")
        logging.getLogger("leaf").info("answering")
        return provider_pb2.GenerateResponse(message=common_pb2.ChatMessage(content=f"leaf|{text}"))

    async def GenerateStream(self, request, context):
        for i in range(3):
            yield provider_pb2.GenerateStreamResponse(delta=str(i), index=i)
        yield provider_pb2.GenerateStreamResponse(index=3, final=True)


class Relay(provider_pb2_grpc.ProviderServiceServicer):
    """Passes each call on to the leaf, as routing calls provider."""

    def __init__(self, downstream: ProviderClient) -> None:
        self.downstream = downstream

    async def Generate(self, request, context):
        return await self.downstream.generate(request)

    async def GenerateStream(self, request, context):
        async for response in self.downstream.generate_stream(request):
            yield response


def request(text: str) -> provider_pb2.GenerateRequest:
    return provider_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(content=text)])


def transport_for(kind: str, channel: grpc.aio.Channel):
    return ExchangeTransport(channel, SERVICE, streams=1) if kind == "exchange" else UnaryTransport(channel)


class Mesh:
    """caller -> relay -> leaf, every hop over ``kind`` (exchange or unary)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.servers, self.channels, self.transports = [], [], []
        self.leaf = Leaf()

    async def server(self, servicer):
        server = create_server(ServerSettings(port=0, grace_period_s=1),
                               [(provider_pb2_grpc.add_ProviderServiceServicer_to_server, servicer)],
                               [SERVICE], server_chain())
        await server.start()
        self.servers.append(server)
        return server

    def client(self, address: str) -> ProviderClient:
        channel = grpc.aio.insecure_channel(address)
        transport = transport_for(self.kind, channel)
        self.channels.append(channel)
        self.transports.append(transport)
        return ProviderClient(transport, client_chain(5.0, 1.0))

    async def __aenter__(self):
        leaf = await self.server(self.leaf)
        relay = await self.server(Relay(self.client(leaf.address)))
        self.caller = self.client(relay.address)
        self.relay_address = relay.address
        return self

    async def __aexit__(self, *exc):
        for transport in self.transports:
            await transport.close()
        for channel in self.channels:
            await channel.close()
        for server in reversed(self.servers):
            await server.stop(0)


@pytest.fixture(params=["exchange", "unary"])
async def mesh(request, spans):
    async with Mesh(request.param) as mesh:
        yield mesh


def by_kind(finished) -> dict[SpanKind, list]:
    out: dict[SpanKind, list] = {SpanKind.CLIENT: [], SpanKind.SERVER: [], SpanKind.INTERNAL: []}
    for span in finished:
        out[span.kind].append(span)
    return out


async def test_one_trace_across_two_hops_with_parent_and_child(mesh, spans):
    tracer = tracing.installed().get_tracer("test")
    with tracer.start_as_current_span("caller") as root:
        got = await mesh.caller.unary("Generate", request("hi"), {"x-clawmesh-request-id": "r-1",
                                                                   "x-clawmesh-tenant": "acme"})
    assert got.message.content == "leaf|hi"
    finished = await wait_for_spans(spans, 5)
    kinds = by_kind(finished)
    assert len(kinds[SpanKind.CLIENT]) == 2 and len(kinds[SpanKind.SERVER]) == 2
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}
    # caller -> client span -> relay's server span -> its client span -> leaf's server span
    def child(kind: SpanKind, parent_id: int):
        return next(s for s in kinds[kind] if s.parent.span_id == parent_id)

    out_client = child(SpanKind.CLIENT, root.get_span_context().span_id)
    relay_server = child(SpanKind.SERVER, out_client.context.span_id)
    in_client = child(SpanKind.CLIENT, relay_server.context.span_id)
    leaf_server = child(SpanKind.SERVER, in_client.context.span_id)
    assert relay_server.parent.is_remote and leaf_server.parent.is_remote
    for span in (out_client, relay_server, in_client, leaf_server):
        assert span.name == f"{SERVICE}/Generate"
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == SERVICE
        assert span.attributes["rpc.method"] == "Generate"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.status.status_code is StatusCode.UNSET
    for span in (relay_server, leaf_server):
        assert span.attributes["clawmesh.request_id"] == "r-1"
        assert span.attributes["clawmesh.tenant"] == "acme"
        assert span.attributes["clawmesh.transport"] == ("exchange" if mesh.kind == "exchange" else "grpc")
    # The leaf saw the relay's client span as its parent, not the caller's traceparent.
    version, trace_hex, parent_hex, flags = mesh.leaf.seen[-1]["traceparent"].split("-")
    assert (trace_hex, parent_hex) == (f"{trace_id:032x}", f"{in_client.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled


async def test_a_call_without_trace_context_starts_a_trace_at_the_server(mesh, spans):
    await mesh.caller.generate(request("hi"))
    finished = await wait_for_spans(spans, 4)
    kinds = by_kind(finished)
    first = next(s for s in kinds[SpanKind.CLIENT] if s.parent is None)
    assert len({s.context.trace_id for s in finished}) == 1
    assert first.context.trace_id == kinds[SpanKind.SERVER][0].context.trace_id


async def test_streams_are_spans_that_end_with_the_stream(mesh, spans):
    chunks = [c async for c in mesh.caller.generate_stream(request("hi"))]
    assert chunks[-1].final
    finished = await wait_for_spans(spans, 4)
    assert len(finished) == 4
    assert {s.name for s in finished} == {f"{SERVICE}/GenerateStream"}
    assert len({s.context.trace_id for s in finished}) == 1
    assert all(s.attributes["rpc.grpc.status_code"] == 0 for s in finished)
    assert all(s.status.status_code is StatusCode.UNSET for s in finished)


async def test_a_caller_that_stops_reading_is_not_an_error(mesh, spans):
    stream = mesh.caller.generate_stream(request("hi"))
    async for _ in stream:
        break
    await stream.aclose()
    finished = await wait_for_spans(spans, 1)
    client = next(s for s in finished if s.kind is SpanKind.CLIENT and s.parent is None)
    assert client.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("text, code, server_error", [
    ("bad", grpc.StatusCode.INVALID_ARGUMENT, False),  # a refusal: UNSET on the server (semconv)
    ("down", grpc.StatusCode.UNAVAILABLE, True),
    ("bug", grpc.StatusCode.INTERNAL, True),
])
async def test_status_on_errors(mesh, spans, text, code, server_error):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.caller.generate(request(text))
    assert err.value.code() == code
    finished = await wait_for_spans(spans, 4)
    assert len(finished) == 4
    for span in finished:
        assert span.attributes["rpc.grpc.status_code"] == code.value[0], span.name
        failed = span.kind is SpanKind.CLIENT or server_error
        assert span.status.status_code is (StatusCode.ERROR if failed else StatusCode.UNSET)
        if failed:
            assert span.status.description.startswith(code.name)


async def test_health_and_the_exchange_stream_itself_are_not_traced(mesh, spans):
    await mesh.caller.generate(request("hi"))  # opens the Exchange stream on the exchange transport
    async with grpc.aio.insecure_channel(mesh.relay_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finished = await wait_for_spans(spans, 4)
    await asyncio.sleep(0.05)
    assert len(spans.get_finished_spans()) == 4
    assert {s.name for s in finished} == {f"{SERVICE}/Generate"}


async def test_the_callers_sampling_decision_is_followed(mesh, spans):
    unsampled = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00"),)
    async with grpc.aio.insecure_channel(mesh.relay_address) as channel:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        await stub.Generate(request("hi"), metadata=unsampled, timeout=5)
        await asyncio.sleep(0.05)
        assert spans.get_finished_spans() == ()
        # ... yet the trace id travels on: the leaf's parent is the relay's unrecorded span.
        assert mesh.leaf.seen[-1]["traceparent"].startswith(f"00-{TRACE_ID}-")
        assert not int(mesh.leaf.seen[-1]["traceparent"].rsplit("-", 1)[1], 16) & 1  # not sampled
        sampled = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("tracestate", "vendor=x"))
        await stub.Generate(request("hi"), metadata=sampled, timeout=5)
    finished = await wait_for_spans(spans, 3)
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    relay_server = next(s for s in finished
                        if s.kind is SpanKind.SERVER and s.parent.span_id == int(PARENT_ID, 16))
    assert relay_server.parent.trace_state.get("vendor") == "x"
    assert mesh.leaf.seen[-1]["tracestate"] == "vendor=x"


async def test_with_tracing_off_nothing_is_added_and_trace_context_passes_through():
    assert tracing.installed() is None
    assert not any(isinstance(ic, TracingClientInterceptor) for ic in client_chain(1.0, 1.0))
    assert TracingServerInterceptor().bypass("/any.Service/Method")
    header = f"00-{TRACE_ID}-{PARENT_ID}-01"
    async with Mesh("unary") as mesh, grpc.aio.insecure_channel(mesh.relay_address) as channel:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        await stub.Generate(request("hi"), metadata=(("traceparent", header),), timeout=5)
    assert mesh.leaf.seen[-1]["traceparent"] == header  # passed on unchanged by propagation


def test_json_log_lines_carry_the_current_trace_and_span_ids(spans):
    formatter = JsonFormatter("test")
    record = logging.makeLogRecord({"msg": "hello", "name": "t"})
    assert "trace_id" not in json.loads(formatter.format(record))
    with tracing.installed().get_tracer("test").start_as_current_span("work") as span:
        line = json.loads(formatter.format(record))
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")


async def test_a_handler_log_line_written_in_the_call_has_its_ids(mesh, spans):
    lines: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record):  # formats synchronously, in the call's context, as stderr would
            lines.append(json.loads(JsonFormatter("leaf").format(record)))

    handler = Capture()
    logger = logging.getLogger("leaf")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        await mesh.caller.generate(request("hi"))
    finally:
        logger.removeHandler(handler)
    finished = await wait_for_spans(spans, 4)
    [line] = lines
    server_ids = {format(s.context.span_id, "016x") for s in finished if s.kind is SpanKind.SERVER}
    assert line["span_id"] in server_ids
    assert line["trace_id"] == format(finished[0].context.trace_id, "032x")


def test_settings_and_otel_variables_choose_the_provider():
    settings = MeshSettings()
    assert settings.telemetry.tracing_enabled and settings.telemetry.trace_sample_ratio == 0.1
    assert tracing.build_provider("ingest", settings, {"OTEL_SDK_DISABLED": "true"}) is None
    off = MeshSettings(telemetry={"tracing_enabled": False})
    assert tracing.build_provider("ingest", off, {}) is None
    provider = tracing.build_provider("ingest", settings, {"OTEL_TRACES_EXPORTER": "none"}, "i-1")
    try:
        assert provider.sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.1},")
        assert provider.resource.attributes["service.name"] == "ingest"
        assert provider.resource.attributes["service.instance.id"] == "i-1"
    finally:
        provider.shutdown()
    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.5", "OTEL_SERVICE_NAME": "edge",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored"}
    provider = tracing.build_provider("ingest", settings, env)
    try:
        assert provider.sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.5},")
        assert provider.resource.attributes["service.name"] == "edge"
        assert provider.resource.attributes["deployment.environment"] == "prod"
    finally:
        provider.shutdown()
    assert tracing.sampler({"OTEL_TRACES_SAMPLER": "always_on"}, 0.1).get_description() == "AlwaysOnSampler"
    with pytest.raises(SettingsError, match="OTEL_TRACES_SAMPLER"):
        tracing.sampler({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, 0.1)
    with pytest.raises(SettingsError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing.sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, 0.1)
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        tracing.build_provider("ingest", settings, {"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_spans_go_out_over_otlp_to_a_trace_service(spans):
    """The exporter configuration reaches an OTLP/gRPC TraceService (the metrics service's role)."""
    from tests.otlp_receiver import OtlpReceiver

    async with OtlpReceiver() as receiver:
        settings = MeshSettings(metrics={"port": receiver.port}, telemetry={"export_interval_s": 0.05})
        provider = tracing.build_provider("routing", settings, {"OTEL_TRACES_SAMPLER": "always_on"})
        with provider.get_tracer("test").start_as_current_span("work"):
            pass
        await asyncio.to_thread(provider.shutdown)  # flushes
        got = await receiver.wait_for(lambda s: s["name"] == "work")
    assert got["service"] == "routing"


async def test_an_unsampled_call_costs_no_span_yet_its_log_lines_carry_the_trace_id(mesh, spans):
    lines: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(JsonFormatter("leaf").format(record)))

    logger = logging.getLogger("leaf")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with grpc.aio.insecure_channel(mesh.relay_address) as channel:
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
            await stub.Generate(request("hi"), metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00"),),
                                timeout=5)
    finally:
        logger.removeHandler(handler)
    await asyncio.sleep(0.05)
    assert spans.get_finished_spans() == ()
    [line] = lines
    assert line["trace_id"] == TRACE_ID


def test_only_a_parent_based_sampler_lets_unsampled_calls_skip_the_sdk():
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased

    from clawmesh.shared.rpc.interceptors.tracing import _drops_unsampled_children, _unsampled

    def follows(sampler) -> bool:
        return _drops_unsampled_children(TracerProvider(sampler=sampler).get_tracer("t"))

    assert follows(ParentBased(TraceIdRatioBased(0.1)))
    assert follows(ParentBased(ALWAYS_ON)) and follows(ALWAYS_OFF)
    assert not follows(ALWAYS_ON) and not follows(TraceIdRatioBased(0.5))
    assert not follows(ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON))
    assert _unsampled(f"00-{TRACE_ID}-{PARENT_ID}-00").trace_id == int(TRACE_ID, 16)
    assert _unsampled(f"00-{TRACE_ID}-{PARENT_ID}-02") is not None  # random-trace-id flag only
    for header in (None, f"00-{TRACE_ID}-{PARENT_ID}-01", f"00-{TRACE_ID}-{PARENT_ID}-0x",
                   f"00-{'0' * 32}-{PARENT_ID}-00", f"01-{TRACE_ID}-{PARENT_ID}-00", "garbage"):
        assert _unsampled(header) is None, header
