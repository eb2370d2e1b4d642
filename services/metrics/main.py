"""Build the metrics service: OTLP metrics + traces receivers, GetSnapshot, GetTrace, ListTraces.

    server = await build(MeshSettings(metrics={"port": 0, "max_traces": 100}))
    await server.start()

It is on no request's path: every handler works on memory only and never
waits on anything, so exporters are never held up and a slow or absent
metrics service never slows a message.
"""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_metrics_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace_pb2

from clawmesh.metrics.v1 import metrics_pb2_grpc
from clawmesh.services.metrics.aggregator import MetricsAggregator, SpanLog
from clawmesh.services.metrics.servicer import OtlpMetricsServicer, OtlpTraceServicer, SnapshotServicer
from clawmesh.services.metrics.traces import TraceStore
from clawmesh.services.registry import by_name
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings

OTLP_METRICS = "opentelemetry.proto.collector.metrics.v1.MetricsService"
OTLP_TRACE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _add_unary(service: str, method: str, fn, request_cls, response_cls, server) -> None:
    # opentelemetry-proto's generated add_*_to_server only calls add_generic_rpc_handlers;
    # register the handler both ways, as current grpcio-tools output does.
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def add_otlp_metrics_servicer(servicer: OtlpMetricsServicer, server) -> None:
    _add_unary(
        OTLP_METRICS,
        "Export",
        servicer.Export,
        otlp_metrics_pb2.ExportMetricsServiceRequest,
        otlp_metrics_pb2.ExportMetricsServiceResponse,
        server,
    )


def add_otlp_trace_servicer(servicer: OtlpTraceServicer, server) -> None:
    _add_unary(
        OTLP_TRACE,
        "Export",
        servicer.Export,
        otlp_trace_pb2.ExportTraceServiceRequest,
        otlp_trace_pb2.ExportTraceServiceResponse,
        server,
    )


async def build(
    settings: MeshSettings,
    stats=None,
    *,
    aggregator: MetricsAggregator | None = None,
    spans: SpanLog | None = None,
    traces: TraceStore | None = None,
) -> MeshServer:
    """Build (not start) the metrics server; ``aggregator``/``spans``/``traces`` may be
    injected (the trace store's bounds otherwise come from ``settings.metrics``).

    ``stats`` (a ``clawmesh.shared.rpcstats.RpcStats``) receives this server's own
    per-call figures, like every service's; the launcher exports no metrics *from*
    the metrics service, so it is normally None.
    """
    aggregator = MetricsAggregator() if aggregator is None else aggregator
    spans = SpanLog() if spans is None else spans
    if traces is None:
        traces = TraceStore(settings.metrics.max_traces, settings.metrics.max_spans_per_trace)
    return create_server(
        settings.metrics,
        [
            (metrics_pb2_grpc.add_MetricsServiceServicer_to_server, SnapshotServicer(aggregator, traces)),
            (add_otlp_metrics_servicer, OtlpMetricsServicer(aggregator)),
            (add_otlp_trace_servicer, OtlpTraceServicer(spans, traces)),
        ],
        by_name("metrics").grpc_services,
        server_chain(stats, settings.deadline_reserve_ms),
    )
