"""GetTrace and ListTraces through a real metrics server on port 0, fed over OTLP/gRPC.

Spans arrive as real ExportTraceServiceRequests on the standard
``opentelemetry.proto.collector.trace.v1.TraceService/Export``, hand-built or from the
OTel SDK's OTLP exporter (which is synchronous: it flushes in a worker thread, as the
server runs on this test's event loop).
"""

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.services.metrics.main import build
from clawmesh.shared.errors import bad_request_fields
from clawmesh.shared.settings import MeshSettings
from tests.conftest import trailing_status
from tests.services.metrics.otlp_traces import T0_NS, mesh_trace, span_hex, trace_hex

RECENT, SLOWEST, ERRORED = (metrics_pb2.TRACE_ORDER_RECENT, metrics_pb2.TRACE_ORDER_SLOWEST,
                            metrics_pb2.TRACE_ORDER_ERRORED)


@pytest.fixture
async def server():
    server = await build(MeshSettings(metrics={"port": 0, "max_traces": 3, "max_spans_per_trace": 4}))
    await server.start()
    yield server
    await server.stop(grace_s=0)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return metrics_pb2_grpc.MetricsServiceStub(channel)


async def send(channel, request) -> None:
    await trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=5)


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_get_trace_by_trace_id_returns_the_waterfall(channel, stub):
    await send(channel, mesh_trace(1, request_id="req-1", total_ms=30, error=True))
    response = await stub.GetTrace(metrics_pb2.GetTraceRequest(trace_id=trace_hex(1)), timeout=5)
    assert response.trace_id == trace_hex(1)
    # max_spans_per_trace=4: mesh_trace has 5 spans, the last one sent is dropped.
    assert response.dropped_spans == 1
    rows = [(s.service, s.name.rsplit("/", 1)[-1], s.depth) for s in response.spans]
    assert rows == [("ingest", "Submit", 0), ("ingest", "Route", 1), ("routing", "Route", 2),
                    ("provider", "Generate", 3)]
    submit, client, _, generate = response.spans
    assert (submit.span_id, submit.parent_span_id, submit.trace_id) == (span_hex(11), "", trace_hex(1))
    assert client.parent_span_id == span_hex(11)
    assert (submit.kind, client.kind) == (metrics_pb2.SPAN_KIND_SERVER, metrics_pb2.SPAN_KIND_CLIENT)
    assert submit.start_time.ToNanoseconds() == T0_NS
    assert submit.end_time.ToNanoseconds() == T0_NS + 30_000_000
    assert submit.duration_ms == pytest.approx(30.0)
    assert submit.attributes["clawmesh.request_id"] == "req-1"
    assert submit.status_code == metrics_pb2.SPAN_STATUS_CODE_UNSPECIFIED
    assert (generate.status_code, generate.status_message) == (metrics_pb2.SPAN_STATUS_CODE_ERROR,
                                                               "backend down")
    assert generate.attributes["rpc.grpc.status_code"] == "14"


async def test_get_trace_by_request_id(channel, stub):
    await send(channel, mesh_trace(1, request_id="9f1c"))
    await send(channel, mesh_trace(2, request_id="other"))
    response = await stub.GetTrace(metrics_pb2.GetTraceRequest(request_id="9f1c"), timeout=5)
    assert response.trace_id == trace_hex(1)
    assert len(response.spans) == 4


async def test_unknown_trace_and_request_id_are_not_found_naming_them(stub):
    missing = "4bf92f3577b34da6a3ce929d0e0e4736"
    error = await rpc_error(stub.GetTrace(metrics_pb2.GetTraceRequest(trace_id=missing.upper()), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details()
    error = await rpc_error(stub.GetTrace(metrics_pb2.GetTraceRequest(request_id="req-x"), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "req-x" in error.details()


@pytest.mark.parametrize(("request_", "field"), [
    (metrics_pb2.GetTraceRequest(trace_id="not-hex"), "trace_id"),
    (metrics_pb2.GetTraceRequest(trace_id="4bf92f3577b34da6"), "trace_id"),
    (metrics_pb2.GetTraceRequest(trace_id="0" * 32), "trace_id"),
    (metrics_pb2.GetTraceRequest(), "trace_id"),
    (metrics_pb2.GetTraceRequest(request_id=""), "request_id"),
    (metrics_pb2.GetTraceRequest(request_id="r" * 257), "request_id"),
])
async def test_bad_lookups_are_invalid_argument_naming_the_field(stub, request_, field):
    error = await rpc_error(stub.GetTrace(request_, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(trailing_status(error)) == [field]
    assert field in error.details()


async def test_a_bad_trace_id_is_quoted_in_the_violation(stub):
    error = await rpc_error(stub.GetTrace(metrics_pb2.GetTraceRequest(trace_id="xyz"), timeout=5))
    status = trailing_status(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert "'xyz'" in bad.field_violations[0].description


async def test_list_traces_in_each_order_with_limit_and_service(channel, stub):
    for n, (start, total, error) in enumerate([(0, 50, False), (100, 10, True), (200, 80, True)], 1):
        await send(channel, mesh_trace(n, start_ms=start, total_ms=total, error=error, request_id=f"r{n}"))

    async def ids(**kw) -> list[int]:
        response = await stub.ListTraces(metrics_pb2.ListTracesRequest(**kw), timeout=5)
        assert response.total_traces == 3
        return [int(t.trace_id, 16) for t in response.traces]

    assert await ids() == [3, 2, 1]  # UNSPECIFIED is RECENT
    assert await ids(order=RECENT) == [3, 2, 1]
    assert await ids(order=SLOWEST) == [3, 1, 2]
    assert await ids(order=ERRORED) == [3, 2]
    assert await ids(order=SLOWEST, limit=2) == [3, 1]
    assert await ids(service="memory") == []  # memory's span is the one over the limit of 4
    assert await ids(service="provider") == [3, 2, 1]

    response = await stub.ListTraces(metrics_pb2.ListTracesRequest(order=SLOWEST, limit=1), timeout=5)
    [top] = response.traces
    assert (top.trace_id, top.root_name, top.root_service) == (
        trace_hex(3), "clawmesh.ingest.v1.IngestService/Submit", "ingest")
    assert top.start_time.ToNanoseconds() == T0_NS + 200_000_000
    assert top.duration_ms == pytest.approx(80.0)
    assert (top.span_count, top.error, top.request_id) == (4, True, "r3")
    assert list(top.services) == ["ingest", "provider", "routing"]


async def test_the_oldest_trace_is_evicted_through_the_server(channel, stub):
    for n in range(1, 6):  # max_traces=3
        await send(channel, mesh_trace(n, request_id=f"r{n}"))
    response = await stub.ListTraces(metrics_pb2.ListTracesRequest(), timeout=5)
    assert [int(t.trace_id, 16) for t in response.traces] == [5, 4, 3]
    error = await rpc_error(stub.GetTrace(metrics_pb2.GetTraceRequest(request_id="r1"), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("request_", "field"), [
    (metrics_pb2.ListTracesRequest(limit=1001), "limit"),
    (metrics_pb2.ListTracesRequest(order=42), "order"),
])
async def test_bad_list_requests_are_invalid_argument(stub, request_, field):
    error = await rpc_error(stub.ListTraces(request_, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(trailing_status(error)) == [field]


async def test_list_limit_defaults_to_20(channel, stub):
    await stub.ListTraces(metrics_pb2.ListTracesRequest(limit=1000), timeout=5)  # the maximum is fine
    big = await build(MeshSettings(metrics={"port": 0}))
    await big.start()
    try:
        async with grpc.aio.insecure_channel(big.address) as ch:
            for n in range(1, 26):
                await send(ch, mesh_trace(n))
            response = await metrics_pb2_grpc.MetricsServiceStub(ch).ListTraces(
                metrics_pb2.ListTracesRequest(), timeout=5)
    finally:
        await big.stop(grace_s=0)
    assert (len(response.traces), response.total_traces) == (20, 25)


def sdk_provider(address: str, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=address, insecure=True, timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    return provider


async def test_otel_sdk_spans_of_two_services_make_one_trace(server, stub):
    """Two "services" (resources with their own service.name) export one trace over OTLP."""
    ingest, routing = sdk_provider(server.address, "ingest"), sdk_provider(server.address, "routing")
    try:
        tracer_a, tracer_b = ingest.get_tracer("test"), routing.get_tracer("test")
        with tracer_a.start_as_current_span("IngestService/Submit", kind=SpanKind.SERVER) as root:
            root.set_attribute("clawmesh.request_id", "sdk-req-1")
            with tracer_a.start_as_current_span("RoutingService/Route", kind=SpanKind.CLIENT):
                # The W3C context crosses the hop: routing's server span is the client's child.
                with tracer_b.start_as_current_span("RoutingService/Route", kind=SpanKind.SERVER) as srv:
                    srv.set_attribute("clawmesh.request_id", "sdk-req-1")
                    with tracer_b.start_as_current_span("load history"):
                        pass
                    srv.set_status(Status(StatusCode.ERROR, "provider unavailable"))
        trace_id = f"{root.get_span_context().trace_id:032x}"
        for provider in (routing, ingest):
            assert await asyncio.to_thread(provider.force_flush, 5_000)
    finally:
        for provider in (ingest, routing):
            await asyncio.to_thread(provider.shutdown)
        otel_trace.get_tracer_provider()  # the global provider is untouched

    response = await stub.GetTrace(metrics_pb2.GetTraceRequest(request_id="sdk-req-1"), timeout=5)
    assert response.trace_id == trace_id
    rows = [(s.service, s.name, s.depth, s.kind) for s in response.spans]
    assert rows == [
        ("ingest", "IngestService/Submit", 0, metrics_pb2.SPAN_KIND_SERVER),
        ("ingest", "RoutingService/Route", 1, metrics_pb2.SPAN_KIND_CLIENT),
        ("routing", "RoutingService/Route", 2, metrics_pb2.SPAN_KIND_SERVER),
        ("routing", "load history", 3, metrics_pb2.SPAN_KIND_INTERNAL),
    ]
    server_span = response.spans[2]
    assert (server_span.status_code, server_span.status_message) == (
        metrics_pb2.SPAN_STATUS_CODE_ERROR, "provider unavailable")
    for parent, child in zip(response.spans, response.spans[1:], strict=False):
        assert child.parent_span_id == parent.span_id
        assert parent.start_time.ToNanoseconds() <= child.start_time.ToNanoseconds()
        assert parent.duration_ms >= child.duration_ms >= 0

    listed = await stub.ListTraces(metrics_pb2.ListTracesRequest(order=ERRORED), timeout=5)
    [summary] = listed.traces
    assert (summary.trace_id, summary.root_service, summary.span_count) == (trace_id, "ingest", 4)
    assert (list(summary.services), summary.error, summary.request_id) == (
        ["ingest", "routing"], True, "sdk-req-1")
