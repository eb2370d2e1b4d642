"""Thin servicers over the aggregator and the trace store: OTLP receivers in,
GetSnapshot, GetTrace and ListTraces out.

    servicer = SnapshotServicer(aggregator, traces)
    await servicer.GetTrace(metrics_pb2.GetTraceRequest(request_id="9f1c..."), context)

The OTLP receivers are the standard ``opentelemetry.proto.collector`` services,
so any OTel SDK or Collector exports here unchanged; they only fold the request
into memory (no I/O, no awaits) and answer the empty Export*ServiceResponse.
Bad queries raise ``InvalidArgument`` naming the field, unknown traces ``NotFound``
(``clawmesh.shared.errors``; the server's error interceptor makes the status).
"""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_metrics_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as otlp_metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_trace_grpc

from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.services.metrics.aggregator import MetricsAggregator, ServiceStats, SpanLog
from clawmesh.services.metrics.histogram import LatencyStats
from clawmesh.services.metrics.traces import Order, SpanData, Trace, TraceStore, TraceSummary, is_trace_id
from clawmesh.shared.errors import InvalidArgument, NotFound

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 1000
MAX_REQUEST_ID_CHARS = 256
_ORDERS = {order.value for order in Order}


class OtlpMetricsServicer(otlp_metrics_grpc.MetricsServiceServicer):
    """``opentelemetry.proto.collector.metrics.v1.MetricsService/Export``."""

    def __init__(self, aggregator: MetricsAggregator) -> None:
        self._aggregator = aggregator

    async def Export(self, request, context):
        self._aggregator.ingest(request)
        return otlp_metrics_pb2.ExportMetricsServiceResponse()


class OtlpTraceServicer(otlp_trace_grpc.TraceServiceServicer):
    """``opentelemetry.proto.collector.trace.v1.TraceService/Export``."""

    def __init__(self, spans: SpanLog, traces: TraceStore | None = None) -> None:
        self._spans = spans
        self._traces = traces

    async def Export(self, request, context):
        self._spans.ingest(request)
        if self._traces is not None:
            self._traces.ingest(request)
        return otlp_trace_pb2.ExportTraceServiceResponse()


class SnapshotServicer(metrics_pb2_grpc.MetricsServiceServicer):
    """``clawmesh.metrics.v1.MetricsService``: reads the aggregate and the traces back."""

    def __init__(self, aggregator: MetricsAggregator, traces: TraceStore | None = None) -> None:
        self._aggregator = aggregator
        self._traces = TraceStore() if traces is None else traces

    async def GetSnapshot(self, request, context):
        response = metrics_pb2.GetSnapshotResponse(
            services=[_service_pb(s) for s in self._aggregator.snapshot(request.service or None)]
        )
        response.time.FromNanoseconds(_nanos(self._aggregator.clock()))
        return response

    async def GetTrace(self, request, context):
        trace = self._find(request)
        response = metrics_pb2.GetTraceResponse(
            trace_id=trace.trace_id, dropped_spans=trace.dropped_spans
        )
        for span, depth in trace.waterfall():
            _fill_span(response.spans.add(), span, depth)
        return response

    def _find(self, request) -> Trace:
        lookup = request.WhichOneof("lookup")
        if lookup == "request_id":
            request_id = request.request_id
            if not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
                raise InvalidArgument("request_id", f"must be 1 to {MAX_REQUEST_ID_CHARS} characters")
            trace = self._traces.by_request_id(request_id)
            if trace is None:
                raise NotFound(f"no trace with request id {request_id!r}")
            return trace
        if lookup is None:
            raise InvalidArgument("trace_id", "set trace_id or request_id")
        if not is_trace_id(request.trace_id):
            raise InvalidArgument(
                "trace_id", f"must be 32 hex digits, not all zero; got {request.trace_id[:64]!r}"
            )
        trace = self._traces.get(request.trace_id)
        if trace is None:
            raise NotFound(f"trace {request.trace_id.lower()} not found")
        return trace

    async def ListTraces(self, request, context):
        order = request.order or metrics_pb2.TRACE_ORDER_RECENT
        if order not in _ORDERS:
            raise InvalidArgument("order", f"unknown TraceOrder value {order}")
        if request.limit > MAX_LIST_LIMIT:
            raise InvalidArgument("limit", f"must be at most {MAX_LIST_LIMIT}")
        summaries = self._traces.list(Order(order), request.limit or DEFAULT_LIST_LIMIT, request.service)
        return metrics_pb2.ListTracesResponse(
            traces=[_summary_pb(s) for s in summaries], total_traces=len(self._traces)
        )


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


def _fill_span(out: metrics_pb2.Span, span: SpanData, depth: int) -> None:
    out.trace_id, out.span_id, out.parent_span_id = span.trace_id, span.span_id, span.parent_span_id
    out.name, out.service, out.kind, out.depth = span.name, span.service, span.kind, depth
    out.start_time.FromNanoseconds(span.start_ns)
    out.end_time.FromNanoseconds(span.end_ns)
    out.duration_ms = span.duration_ms
    out.status_code, out.status_message = span.status_code, span.status_message
    out.attributes.update(span.attributes)
    for event in span.events:
        pb = out.events.add(name=event.name, attributes=event.attributes)
        pb.time.FromNanoseconds(event.time_ns)


def _summary_pb(summary: TraceSummary) -> metrics_pb2.TraceSummary:
    out = metrics_pb2.TraceSummary(
        trace_id=summary.trace_id,
        root_name=summary.root_name,
        root_service=summary.root_service,
        duration_ms=summary.duration_ms,
        span_count=summary.span_count,
        services=summary.services,
        error=summary.error,
        request_id=summary.request_id,
    )
    out.start_time.FromNanoseconds(summary.start_ns)
    return out
