"""Build the metrics service: OTLP metrics + traces receivers and GetSnapshot.

It is on no request's path: every handler works on memory only and never
waits on anything, so exporters are never held up and a slow or absent
metrics service never slows a message.
"""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as otlp_metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_trace_grpc

from clawmesh.metrics.v1 import metrics_pb2_grpc
from clawmesh.services.metrics.aggregator import MetricsAggregator, SpanLog
from clawmesh.services.metrics.servicer import OtlpMetricsServicer, OtlpTraceServicer, SnapshotServicer
from clawmesh.shared.rpc.chain import server_interceptors
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings

SERVICE_NAMES = [
    "clawmesh.metrics.v1.MetricsService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "opentelemetry.proto.collector.trace.v1.TraceService",
]


async def build(
    settings: MeshSettings,
    meter=None,
    *,
    aggregator: MetricsAggregator | None = None,
    spans: SpanLog | None = None,
) -> MeshServer:
    """Build (not start) the metrics server; ``aggregator``/``spans`` may be injected."""
    aggregator = MetricsAggregator() if aggregator is None else aggregator
    spans = SpanLog() if spans is None else spans
    return create_server(
        settings.metrics,
        [
            (metrics_pb2_grpc.add_MetricsServiceServicer_to_server, SnapshotServicer(aggregator)),
            (otlp_metrics_grpc.add_MetricsServiceServicer_to_server, OtlpMetricsServicer(aggregator)),
            (otlp_trace_grpc.add_TraceServiceServicer_to_server, OtlpTraceServicer(spans)),
        ],
        SERVICE_NAMES,
        server_interceptors(meter),
    )
