"""The metrics service's core: OTLP telemetry in, per-service summaries out.

    metrics = MetricsAggregator(clock=time.time)
    metrics.ingest(export_metrics_request)      # an OTLP ExportMetricsServiceRequest
    [ingest] = metrics.snapshot("ingest")       # ServiceStats: counts, codes, latency
    ingest.instance_details[0].gauges           # {"clawmesh.edge.admission.load_percentage": 12.5, ...}

Only ``rpc.server.duration`` histograms (ms; attributes ``rpc.method`` and
``rpc.grpc.status_code``, as ``clawmesh.shared.rpc.chain.MetricsInterceptor`` records
them, or ``clawmesh.shared.rpcstats.OtlpStatsExporter`` sends them) are aggregated;
``error_count`` counts server faults only (``clawmesh.shared.rpcstats.is_server_fault``:
INTERNAL, UNAVAILABLE ... but not INVALID_ARGUMENT, NOT_FOUND ...), while
``status_counts`` count every code.

OTLP ``Gauge`` metrics (e.g. ingest's ``clawmesh.edge.*``, see
``clawmesh.shared.rpcstats.RpcStats.add_gauges``) are kept as the latest value per
(service, instance, gauge): ``ServiceStats.instance_details``, one entry per reporting
process. They are not combined across instances: a load percentage does not add up.
A point with attributes is kept under ``name{key=value,...}`` (keys sorted).

Other data points are counted and ignored. Memory is bounded: an instance silent for
``stale_after_s`` is dropped with its series and gauges, and at most ``max_series``
series and ``max_gauges`` gauges are kept (the rest are counted as dropped).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.proto.metrics.v1 import metrics_pb2

from clawmesh.services.metrics.histogram import Histogram, LatencyStats, summarize
from clawmesh.shared.errors import code_name
from clawmesh.shared.rpcstats import is_server_fault

DURATION_METRIC = "rpc.server.duration"
UNKNOWN_SERVICE = "unknown_service"
UNKNOWN = 2
_CODES_BY_NAME = {code_name(code): code for code in range(17)}
_NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class MethodStats:
    method: str
    request_count: int
    status_counts: dict[str, int]
    latency: LatencyStats


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """One reporting process (``service.instance.id``) and its latest gauge values."""

    instance_id: str
    last_report_time: float  # clock seconds of its newest report
    gauges: dict[str, float]  # by gauge name, sorted


@dataclass(frozen=True, slots=True)
class ServiceStats:
    service: str
    request_count: int
    error_count: int  # server faults (is_server_fault), not refusals like INVALID_ARGUMENT
    instances: int
    last_report_time: float  # clock seconds of the newest report
    latency: LatencyStats
    methods: list[MethodStats]
    instance_details: list[InstanceStats] = field(default_factory=list)  # by instance_id


def resource_identity(resource) -> tuple[str, str]:
    """(service.name, service.instance.id) of an OTLP Resource."""
    service, instance = UNKNOWN_SERVICE, ""
    for kv in resource.attributes:
        if kv.key == "service.name":
            service = kv.value.string_value or UNKNOWN_SERVICE
        elif kv.key == "service.instance.id":
            instance = kv.value.string_value
    return service, instance


def _series_key(point: metrics_pb2.HistogramDataPoint) -> tuple[str, int]:
    method, rpc_service, code = "", "", UNKNOWN
    for kv in point.attributes:
        if kv.key == "rpc.method":
            method = kv.value.string_value
        elif kv.key == "rpc.service":
            rpc_service = kv.value.string_value
        elif kv.key == "rpc.grpc.status_code":
            kind = kv.value.WhichOneof("value")
            raw = kv.value.string_value.strip().upper()
            if kind == "int_value":
                code = kv.value.int_value
            elif kind == "string_value":
                code = int(raw) if raw.isdigit() else _CODES_BY_NAME.get(raw, UNKNOWN)
    if rpc_service and not method.startswith("/"):  # semconv style: service + short name
        method = f"/{rpc_service}/{method}"
    return method, code


def _gauge_key(name: str, point: metrics_pb2.NumberDataPoint) -> str:
    if not point.attributes:
        return name
    attrs = sorted(
        (kv.key, str(getattr(kv.value, kv.value.WhichOneof("value") or "string_value")))
        for kv in point.attributes
    )
    return name + "{" + ",".join(f"{k}={v}" for k, v in attrs) + "}"


def _gauge_value(point: metrics_pb2.NumberDataPoint) -> float | None:
    kind = point.WhichOneof("value")
    if kind is None or point.flags & _NO_RECORDED_VALUE:
        return None
    return float(point.as_int if kind == "as_int" else point.as_double)


@dataclass(slots=True)
class _Instance:
    last_seen: float
    series: dict[tuple[str, int], Histogram] = field(default_factory=dict)
    gauges: dict[str, tuple[float, int]] = field(default_factory=dict)  # value, time_ns


class MetricsAggregator:
    """Latest ``rpc.server.duration`` point per (service, instance, method, code), and
    latest gauge value per (service, instance, gauge)."""

    def __init__(
        self,
        clock: Clock = time.time,
        stale_after_s: float = 600.0,
        max_series: int = 10_000,
        max_instances: int = 1_000,
        max_gauges: int = 10_000,
    ) -> None:
        self.clock = clock
        self.stale_after_s = stale_after_s
        self.max_series = max_series
        self.max_instances = max_instances
        self.max_gauges = max_gauges
        self._instances: dict[tuple[str, str], _Instance] = {}
        self.series_count = 0
        self.gauge_count = 0
        self.points_received = 0  # every data point of every metric
        self.points_ignored = 0  # other metrics, malformed or empty points
        self.points_dropped = 0  # refused by the series or instance cap
        self.series_expired = 0

    def ingest(self, request) -> None:
        """Fold in one OTLP ExportMetricsServiceRequest."""
        now = self.clock()
        self.expire(now)
        for rm in request.resource_metrics:
            key = resource_identity(rm.resource)
            inst = self._instances.get(key)
            if inst is None and len(self._instances) < self.max_instances:
                inst = self._instances[key] = _Instance(now)
            elif inst is not None:
                inst.last_seen = now
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    self._ingest_metric(inst, metric)

    def _ingest_metric(self, inst: _Instance | None, metric: metrics_pb2.Metric) -> None:
        kind = metric.WhichOneof("data")
        points = getattr(metric, kind).data_points if kind else ()
        self.points_received += len(points)
        if kind == "gauge":
            self._ingest_gauge(inst, metric.name, points)
            return
        if metric.name != DURATION_METRIC or kind != "histogram":
            self.points_ignored += len(points)
            return
        if inst is None:
            self.points_dropped += len(points)
            return
        delta = metric.histogram.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
        for point in points:
            hist = None if point.flags & _NO_RECORDED_VALUE else Histogram.from_point(point)
            if hist is None:
                self.points_ignored += 1
                continue
            key = _series_key(point)
            old = inst.series.get(key)
            if old is None:
                if self.series_count >= self.max_series:
                    self.points_dropped += 1
                    continue
                inst.series[key] = hist
                self.series_count += 1
            elif delta and old.bounds == hist.bounds:
                old.add(hist)
            elif delta or hist.time_ns >= old.time_ns:  # a late, older cumulative point loses
                inst.series[key] = hist

    def _ingest_gauge(self, inst: _Instance | None, name: str, points) -> None:
        if inst is None:
            self.points_dropped += len(points)
            return
        for point in points:
            value = _gauge_value(point)
            if value is None:
                self.points_ignored += 1
                continue
            key = _gauge_key(name, point)
            old = inst.gauges.get(key)
            if old is None:
                if self.gauge_count >= self.max_gauges:
                    self.points_dropped += 1
                    continue
                self.gauge_count += 1
            elif point.time_unix_nano < old[1]:  # a late, older point loses
                continue
            inst.gauges[key] = (value, point.time_unix_nano)

    def expire(self, now: float | None = None) -> None:
        """Drop instances (and their series and gauges) silent for longer than ``stale_after_s``."""
        cutoff = (self.clock() if now is None else now) - self.stale_after_s
        for key in [k for k, inst in self._instances.items() if inst.last_seen < cutoff]:
            inst = self._instances.pop(key)
            self.series_count -= len(inst.series)
            self.series_expired += len(inst.series)
            self.gauge_count -= len(inst.gauges)

    def snapshot(self, service: str | None = None) -> list[ServiceStats]:
        """Per-service summaries, sorted by name; ``service`` filters (unknown: [])."""
        self.expire()
        groups: dict[str, dict[str, _Instance]] = {}
        for (name, instance_id), inst in self._instances.items():
            if not service or name == service:
                groups.setdefault(name, {})[instance_id] = inst
        return [_service_stats(name, insts) for name, insts in sorted(groups.items())]

    def gauges(self, service: str) -> dict[str, dict[str, float]]:
        """``service``'s latest gauge values: instance id → gauge name → value."""
        return {
            d.instance_id: d.gauges
            for stats in self.snapshot(service)
            for d in stats.instance_details
        }


def _service_stats(service: str, by_id: dict[str, _Instance]) -> ServiceStats:
    insts = list(by_id.values())
    per_method: dict[str, list[tuple[int, Histogram]]] = {}
    for inst in insts:
        for (method, code), hist in inst.series.items():
            per_method.setdefault(method, []).append((code, hist))
    methods, errors = [], 0
    for method, items in sorted(per_method.items()):
        status: dict[str, int] = {}
        for code, hist in items:
            status[code_name(code)] = status.get(code_name(code), 0) + hist.count
            errors += hist.count if is_server_fault(code) else 0
        hists = [hist for _, hist in items]
        methods.append(MethodStats(method, sum(h.count for h in hists), status, summarize(hists)))
    return ServiceStats(
        service=service,
        request_count=sum(m.request_count for m in methods),
        error_count=errors,
        instances=len(insts),
        last_report_time=max(inst.last_seen for inst in insts),
        latency=summarize([h for inst in insts for h in inst.series.values()]),
        methods=methods,
        instance_details=[
            InstanceStats(
                instance_id,
                inst.last_seen,
                {name: value for name, (value, _) in sorted(inst.gauges.items())},
            )
            for instance_id, inst in sorted(by_id.items())
        ],
    )


@dataclass(frozen=True, slots=True)
class SpanRecord:
    trace_id: str  # hex
    span_id: str  # hex
    name: str
    service: str
    duration_ms: float


class SpanLog:
    """Counts received spans per service and keeps the last ``capacity`` of them."""

    def __init__(self, capacity: int = 1_000, max_services: int = 1_000) -> None:
        self.recent: deque[SpanRecord] = deque(maxlen=capacity)
        self.counts: dict[str, int] = {}
        self.max_services = max_services
        self.spans_received = 0

    def ingest(self, request) -> None:
        """Fold in one OTLP ExportTraceServiceRequest."""
        for rs in request.resource_spans:
            service, _ = resource_identity(rs.resource)
            spans = [span for ss in rs.scope_spans for span in ss.spans]
            self.spans_received += len(spans)
            if service in self.counts or len(self.counts) < self.max_services:
                self.counts[service] = self.counts.get(service, 0) + len(spans)
            for span in spans[-self.recent.maxlen :] if self.recent.maxlen else ():
                duration_ns = max(span.end_time_unix_nano - span.start_time_unix_nano, 0)
                self.recent.append(
                    SpanRecord(
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.name,
                        service,
                        duration_ns / 1e6,
                    )
                )
