"""In-process end to end: the real OTel SDK exports to a real metrics server on port 0.

The mesh's own services export with ``clawmesh.shared.rpcstats.OtlpStatsExporter``
(tested end to end in tests/shared/test_rpcstats.py); these tests keep the promise
that any OTel SDK or Collector can export here unchanged. The SDK's OTLP
exporters are synchronous: flushing on the event loop that hosts the server
would deadlock, so every flush and shutdown runs in a worker thread.
"""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.services.metrics.aggregator import SpanLog
from clawmesh.services.metrics.main import build
from clawmesh.shared.settings import MeshSettings
from clawmesh.shared.telemetry import LATENCY_BUCKETS_MS

SUBMIT = "/clawmesh.ingest.v1.IngestService/Submit"
CONVERSE = "/clawmesh.ingest.v1.IngestService/Converse"


@pytest.fixture
def spans():
    return SpanLog()


@pytest.fixture
async def server(spans):
    server = await build(MeshSettings(metrics={"port": 0}), spans=spans)
    await server.start()
    yield server
    await server.stop(grace_s=0)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture
async def ingest_provider(server):
    exporter = OTLPMetricExporter(endpoint=server.address, insecure=True, timeout=5)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "ingest", "service.instance.id": "sdk-1"}),
        metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)],
        views=[
            View(
                instrument_name="rpc.server.duration",
                aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS),
            )
        ],
    )
    yield provider
    await asyncio.to_thread(provider.shutdown)


def record_known_latencies(provider) -> None:
    duration = provider.get_meter("clawmesh").create_histogram("rpc.server.duration", unit="ms")

    def record(ms: float, method: str, code: int, times: int) -> None:
        for _ in range(times):
            duration.record(ms, {"rpc.method": method, "rpc.grpc.status_code": code})

    record(2.5, SUBMIT, 0, 90)  # bucket (2, 3]
    record(40.0, SUBMIT, 0, 9)  # bucket (30, 50]
    record(400.0, SUBMIT, 0, 1)  # bucket (300, 500]
    record(0.3, SUBMIT, 3, 5)  # INVALID_ARGUMENT, bucket (0.25, 0.5]
    record(12.0, CONVERSE, 14, 3)  # UNAVAILABLE


async def get_snapshot(channel, service: str = "") -> metrics_pb2.GetSnapshotResponse:
    stub = metrics_pb2_grpc.MetricsServiceStub(channel)
    return await stub.GetSnapshot(metrics_pb2.GetSnapshotRequest(service=service), timeout=5)


async def test_otlp_metrics_from_the_sdk_show_up_in_the_snapshot(channel, ingest_provider):
    record_known_latencies(ingest_provider)
    assert await asyncio.to_thread(ingest_provider.force_flush, 5_000)

    response = await get_snapshot(channel)
    assert response.time.seconds > 0
    [svc] = response.services
    assert (svc.service, svc.instances) == ("ingest", 1)
    assert (svc.request_count, svc.error_count) == (108, 3)  # UNAVAILABLE only: a server fault
    assert svc.last_report_time.seconds > 0
    converse, submit = svc.methods
    assert (submit.method, submit.request_count) == (SUBMIT, 105)
    assert dict(submit.status_counts) == {"OK": 100, "INVALID_ARGUMENT": 5}
    assert dict(converse.status_counts) == {"UNAVAILABLE": 3}
    latency = submit.latency
    assert 2.0 <= latency.p50_ms <= 3.0  # ranks 6..95 are the 2.5 ms calls
    assert 2.0 <= latency.p90_ms <= 3.0
    assert 30.0 <= latency.p99_ms <= 50.0  # rank 103.95: a 40 ms call, bucket (30, 50]
    assert latency.max_ms == pytest.approx(400.0)
    assert latency.mean_ms == pytest.approx((90 * 2.5 + 9 * 40 + 400 + 5 * 0.3) / 105)
    assert converse.latency.p50_ms == pytest.approx(12.0)  # min == max == 12
    assert svc.latency.max_ms == pytest.approx(400.0)


async def test_cumulative_exports_are_not_double_counted(channel, ingest_provider):
    record_known_latencies(ingest_provider)
    assert await asyncio.to_thread(ingest_provider.force_flush, 5_000)
    assert await asyncio.to_thread(ingest_provider.force_flush, 5_000)
    [svc] = (await get_snapshot(channel, "ingest")).services
    assert svc.request_count == 108


async def test_unknown_service_is_an_empty_list(channel, ingest_provider):
    record_known_latencies(ingest_provider)
    assert await asyncio.to_thread(ingest_provider.force_flush, 5_000)
    response = await get_snapshot(channel, "no-such-service")
    assert list(response.services) == []
    assert response.time.seconds > 0


async def test_otlp_spans_from_the_sdk_are_counted(server, spans):
    provider = TracerProvider(resource=Resource.create({"service.name": "routing"}))
    exporter = OTLPSpanExporter(endpoint=server.address, insecure=True, timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("Route") as parent:
        with tracer.start_as_current_span("CallProvider"):
            pass
    try:
        assert await asyncio.to_thread(provider.force_flush, 5_000)
    finally:
        await asyncio.to_thread(provider.shutdown)

    assert spans.counts == {"routing": 2}
    assert [s.name for s in spans.recent] == ["CallProvider", "Route"]
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    assert {s.trace_id for s in spans.recent} == {trace_id}
    assert all(s.service == "routing" and s.duration_ms >= 0 for s in spans.recent)


async def test_health_is_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", "clawmesh.metrics.v1.MetricsService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
