"""Thin servicers over the aggregator: OTLP receivers in, GetSnapshot out.

The OTLP receivers are the standard ``opentelemetry.proto.collector`` services,
so any OTel SDK or Collector exports here unchanged; they only fold the request
into memory (no I/O, no awaits) and answer the empty Export*ServiceResponse.
"""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_metrics_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as otlp_metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_trace_grpc

from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.services.metrics.aggregator import MetricsAggregator, ServiceStats, SpanLog
from clawmesh.services.metrics.histogram import LatencyStats


class OtlpMetricsServicer(otlp_metrics_grpc.MetricsServiceServicer):
    """``opentelemetry.proto.collector.metrics.v1.MetricsService/Export``."""

    def __init__(self, aggregator: MetricsAggregator) -> None:
        self._aggregator = aggregator

    async def Export(self, request, context):
        self._aggregator.ingest(request)
        return otlp_metrics_pb2.ExportMetricsServiceResponse()


class OtlpTraceServicer(otlp_trace_grpc.TraceServiceServicer):
    """``opentelemetry.proto.collector.trace.v1.TraceService/Export``."""

    def __init__(self, spans: SpanLog) -> None:
        self._spans = spans

    async def Export(self, request, context):
        self._spans.ingest(request)
        return otlp_trace_pb2.ExportTraceServiceResponse()


class SnapshotServicer(metrics_pb2_grpc.MetricsServiceServicer):
    """``clawmesh.metrics.v1.MetricsService``: reads the aggregate back.

    The aggregator also keeps each instance's latest gauges
    (``ServiceStats.instance_details``, e.g. ingest's ``clawmesh.edge.*``); the
    ``ServiceSnapshot`` message has no field for them yet, so they are not sent.
    """

    def __init__(self, aggregator: MetricsAggregator) -> None:
        self._aggregator = aggregator

    async def GetSnapshot(self, request, context):
        response = metrics_pb2.GetSnapshotResponse(
            services=[_service_pb(s) for s in self._aggregator.snapshot(request.service or None)]
        )
        response.time.FromNanoseconds(_nanos(self._aggregator.clock()))
        return response


def _nanos(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _latency_pb(stats: LatencyStats) -> metrics_pb2.LatencySummary:
    return metrics_pb2.LatencySummary(
        p50_ms=stats.p50_ms,
        p90_ms=stats.p90_ms,
        p99_ms=stats.p99_ms,
        mean_ms=stats.mean_ms,
        max_ms=stats.max_ms,
    )


def _service_pb(stats: ServiceStats) -> metrics_pb2.ServiceSnapshot:
    out = metrics_pb2.ServiceSnapshot(
        service=stats.service,
        request_count=stats.request_count,
        error_count=stats.error_count,
        instances=stats.instances,
        latency=_latency_pb(stats.latency),
        methods=[
            metrics_pb2.MethodSnapshot(
                method=m.method,
                request_count=m.request_count,
                status_counts=m.status_counts,
                latency=_latency_pb(m.latency),
            )
            for m in stats.methods
        ],
    )
    out.last_report_time.FromNanoseconds(_nanos(stats.last_report_time))
    for d in stats.instance_details:
        inst = out.instance_details.add(instance_id=d.instance_id, gauges=d.gauges)
        inst.last_report_time.FromNanoseconds(_nanos(d.last_report_time))
    return out
