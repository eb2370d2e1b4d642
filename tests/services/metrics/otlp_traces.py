"""Hand-built OTLP spans and ExportTraceServiceRequests for the trace store's tests.

    root = span(TRACE_A, 1, "ingest/Submit", start_ms=0, end_ms=30)
    child = span(TRACE_A, 2, "routing/Route", parent=1, start_ms=2, end_ms=28)
    store.ingest(export({"ingest": [root], "routing": [child]}))

Ids are small integers turned into OTLP's bytes (trace id 16 bytes, span id 8 bytes), so a
test names them by number; times are milliseconds after ``T0_NS``.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

T0_NS = 1_700_000_000_000_000_000
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


def trace_hex(n: int) -> str:
    return f"{n:032x}"


def span_hex(n: int) -> str:
    return f"{n:016x}"


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(trace: int, span_id: int, name: str, *, parent: int = 0, start_ms: float = 0,
         end_ms: float = 1, kind: int = SERVER, error: str | None = None, request_id: str = "",
         attributes: dict | None = None) -> trace_pb2.Span:
    """One span of trace ``trace``; ``error`` (a message) sets status ERROR."""
    attrs = [kv(k, v) for k, v in (attributes or {}).items()]
    if request_id:
        attrs.append(kv("clawmesh.request_id", request_id))
    return trace_pb2.Span(
        trace_id=bytes.fromhex(trace_hex(trace)),
        span_id=bytes.fromhex(span_hex(span_id)),
        parent_span_id=bytes.fromhex(span_hex(parent)) if parent else b"",
        name=name,
        kind=kind,
        start_time_unix_nano=T0_NS + int(start_ms * 1e6),
        end_time_unix_nano=T0_NS + int(end_ms * 1e6),
        attributes=attrs,
        status=trace_pb2.Status(code=ERROR, message=error) if error is not None else None,
    )


def export(spans_by_service: dict[str, list[trace_pb2.Span]]) -> ExportTraceServiceRequest:
    """One export request with a resource (``service.name``) per service."""
    return ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(
            resource=Resource(attributes=[kv("service.name", service)]),
            scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
        )
        for service, spans in spans_by_service.items()
    ])


def mesh_trace(trace: int, *, request_id: str = "", total_ms: float = 30, error: bool = False,
               start_ms: float = 0) -> ExportTraceServiceRequest:
    """A message's trace through three services: ingest → routing → provider + memory.

    Spans (ids trace*10 + 1..5): ingest Submit (root), routing Route, provider Generate,
    memory Append, and ingest's client span of Route; ``error`` fails provider Generate.
    """
    base = trace * 10
    at = start_ms
    return export({
        "ingest": [
            span(trace, base + 1, "clawmesh.ingest.v1.IngestService/Submit", start_ms=at,
                 end_ms=at + total_ms, request_id=request_id),
            span(trace, base + 5, "clawmesh.routing.v1.RoutingService/Route", parent=base + 1,
                 kind=CLIENT, start_ms=at + 1, end_ms=at + total_ms - 1),
        ],
        "routing": [
            span(trace, base + 2, "clawmesh.routing.v1.RoutingService/Route", parent=base + 5,
                 start_ms=at + 2, end_ms=at + total_ms - 2, request_id=request_id),
        ],
        "provider": [
            span(trace, base + 3, "clawmesh.provider.v1.ProviderService/Generate", parent=base + 2,
                 start_ms=at + 3, end_ms=at + total_ms / 2, error="backend down" if error else None,
                 attributes={"rpc.grpc.status_code": 14 if error else 0}),
        ],
        "memory": [
            span(trace, base + 4, "clawmesh.memory.v1.MemoryService/Append", parent=base + 2,
                 start_ms=at + total_ms / 2 + 1, end_ms=at + total_ms - 3),
        ],
    })
