"""Cheap in-process RPC latency stats, pushed over OTLP/gRPC to the metrics service.

    stats = RpcStats()
    exporter = OtlpStatsExporter(stats, service="ingest", endpoint="127.0.0.1:50055",
                                 interval_s=5, timeout_s=2)
    await exporter.start()
    stats.record("/clawmesh.ingest.v1.IngestService/Submit", 0, 2.7)   # per call: ~1 µs
    ...
    await exporter.stop()   # one last export (bounded by timeout_s): counts are complete

``RpcStats.record`` is the only thing on a request's path: a dict lookup keyed
by a ``(method, code)`` tuple, a ``bisect`` over ``LATENCY_BUCKETS_MS`` and a
few attribute updates. No locks: it is only called from the event loop.

``OtlpStatsExporter`` sends every ``interval_s`` one OTLP
``ExportMetricsServiceRequest`` holding a cumulative ``rpc.server.duration``
histogram (ms) with one point per (method, code), attributes ``rpc.method`` and
``rpc.grpc.status_code`` (int): the same data the OTel SDK's MeterProvider sent,
so the metrics service or any OpenTelemetry Collector receives it unchanged.
Export failures are logged at debug level (rate-limited) and never raised.

Gauges ride along in the same request. ``stats.add_gauges("edge", gate.stats)``
registers a source: a callable returning ``{key: number}``, plain or async (an
``async def`` is awaited at export time, so a figure that needs I/O, such as a
backend's entry count, is fresh without a refresh task of its own). Each value
becomes an OTLP ``Gauge`` named ``clawmesh.<group>.<key>`` (e.g.
``clawmesh.edge.admission.load_percentage``): ints as ``as_int``, floats as
``as_double``; None, NaN and infinities are left out. A source that raises or
(async) outlives its share of ``timeout_s`` is skipped for that export, counted
in ``RpcStats.gauge_errors``; it never holds up the histogram. Sources are read
every ``interval_s`` only, never on a request's path.

``is_server_fault(code)`` is the one place that decides which status codes
count as server errors (``error_count`` in the metrics service).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import uuid
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_metrics_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as otlp_metrics_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from clawmesh.shared.telemetry import LATENCY_BUCKETS_MS

log = logging.getLogger(__name__)

DURATION_METRIC = "rpc.server.duration"
SCOPE_NAME = "clawmesh"
GAUGE_PREFIX = "clawmesh."  # gauge names: clawmesh.<group>.<key>
OVERFLOW_METHOD = "_other"  # series past ``max_series`` are folded into this method name

ClockNs = Callable[[], int]
GaugeValues = Mapping[str, float | int | None]
GaugeSource = Callable[[], GaugeValues | Awaitable[GaugeValues]]
_FAILED = object()  # what a gauge source that gave no values this time left

# Codes that are the server's fault. Everything else non-OK is a refusal of a
# bad or unlucky request (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
# PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION, OUT_OF_RANGE,
# CANCELLED, RESOURCE_EXHAUSTED) or a conflict the caller resolves (ABORTED).
_SERVER_FAULTS = frozenset(
    code.value[0]
    for code in (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)
_KNOWN_CODES = frozenset(code.value[0] for code in grpc.StatusCode)


def is_server_fault(code: int | grpc.StatusCode) -> bool:
    """True when status ``code`` is a server error rather than a refusal of the request.

    OK and our own refusals (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
    PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION, OUT_OF_RANGE,
    CANCELLED, RESOURCE_EXHAUSTED, ABORTED) are not; UNKNOWN, INTERNAL,
    UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS, UNIMPLEMENTED are, and so is any
    number that is not a gRPC status code at all.
    """
    value = code.value[0] if isinstance(code, grpc.StatusCode) else code
    return value in _SERVER_FAULTS or value not in _KNOWN_CODES


class _Series:
    __slots__ = ("buckets", "count", "sum", "min", "max")

    def __init__(self, n_buckets: int) -> None:
        self.buckets = [0] * n_buckets
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    """One (method, code) series: cumulative since ``RpcStats.start_time_ns``.

    ``bucket_counts[i]`` counts durations in ``(bounds[i-1], bounds[i]]`` (the
    first bucket is open below, the last open above), as OTLP defines them.
    """

    method: str
    code: int
    bucket_counts: tuple[int, ...]
    count: int
    sum: float
    min: float
    max: float


class RpcStats:
    """Per-(method, code) latency histograms over fixed bucket bounds (ms)."""

    __slots__ = ("bounds", "start_time_ns", "max_series", "gauge_errors", "_series",
                 "_n_buckets", "_gauge_sources")

    def __init__(
        self,
        bounds: Sequence[float] = LATENCY_BUCKETS_MS,
        *,
        max_series: int = 1_000,
        clock_ns: ClockNs = time.time_ns,
    ) -> None:
        self.bounds: tuple[float, ...] = tuple(float(b) for b in bounds)
        if any(a >= b for a, b in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.start_time_ns = clock_ns()
        self.max_series = max_series
        self._series: dict[tuple[str, int], _Series] = {}
        self._n_buckets = len(self.bounds) + 1
        self._gauge_sources: list[tuple[str, GaugeSource]] = []
        self.gauge_errors = 0  # source calls that raised or timed out

    def record(self, method: str, code: int, duration_ms: float) -> None:
        """Count one call of ``method`` that ended with status ``code`` after ``duration_ms``."""
        series = self._series.get((method, code))
        if series is None:
            series = self._new_series(method, code)
        if not duration_ms >= 0.0:  # negative or NaN would poison sum/min forever
            duration_ms = 0.0
        series.buckets[bisect_left(self.bounds, duration_ms)] += 1
        series.count += 1
        series.sum += duration_ms
        if duration_ms < series.min:
            series.min = duration_ms
        if duration_ms > series.max:
            series.max = duration_ms

    def _new_series(self, method: str, code: int) -> _Series:
        # Methods come from registered handlers, but unknown paths (UNIMPLEMENTED)
        # are attacker-chosen: past the cap they share one series per code.
        if len(self._series) >= self.max_series:
            method = OVERFLOW_METHOD
            series = self._series.get((method, code))
            if series is not None:
                return series
        series = self._series[(method, code)] = _Series(self._n_buckets)
        return series

    def __len__(self) -> int:
        return len(self._series)

    def snapshot(self) -> list[SeriesSnapshot]:
        """A copy of every series, sorted by (method, code); later records do not change it."""
        return [
            SeriesSnapshot(method, code, tuple(s.buckets), s.count, s.sum, s.min, s.max)
            for (method, code), s in sorted(self._series.items())
        ]

    # -- gauges ------------------------------------------------------------------------------

    def add_gauges(self, group: str, source: GaugeSource) -> None:
        """Export ``source()``'s values as gauges ``clawmesh.<group>.<key>`` with every push.

        ``source`` returns a mapping of key to number, or is an ``async def`` that does;
        it is called once per export, on the event loop. A name two sources both
        produce takes the later-registered source's value.
        """
        if not group or group.startswith(".") or group.endswith("."):
            raise ValueError(f"bad gauge group {group!r}")
        self._gauge_sources.append((f"{GAUGE_PREFIX}{group}.", source))

    async def collect_gauges(self, timeout_s: float = 1.0) -> dict[str, float | int]:
        """Every source's current values by full gauge name, sorted by name.

        Async sources run concurrently, all within ``timeout_s``; a source that
        raises, times out or returns no mapping is skipped and counted in
        ``gauge_errors``.
        """
        sources = list(self._gauge_sources)
        results: list[object] = [_FAILED] * len(sources)
        pending: dict[int, Awaitable[GaugeValues]] = {}
        for i, (prefix, source) in enumerate(sources):
            try:
                values = source()
            except Exception as exc:
                self._gauge_failed(prefix, exc)
                continue
            if inspect.isawaitable(values):
                pending[i] = values
            else:
                results[i] = values
        if pending:
            done = await asyncio.gather(
                *(asyncio.wait_for(aw, timeout_s) for aw in pending.values()),
                return_exceptions=True,
            )
            for i, values in zip(pending, done, strict=True):
                if isinstance(values, BaseException):
                    self._gauge_failed(sources[i][0], values)
                else:
                    results[i] = values
        out: dict[str, float | int] = {}
        for (prefix, _), values in zip(sources, results, strict=True):
            if values is _FAILED:
                continue
            try:
                items = list(values.items())
            except Exception as exc:
                self._gauge_failed(prefix, exc)
                continue
            for key, value in items:  # in registration order: a later source wins a name
                number = _gauge_number(value)
                if number is not None:
                    out[f"{prefix}{key}"] = number
        return dict(sorted(out.items()))

    def _gauge_failed(self, prefix: str, exc: BaseException) -> None:
        self.gauge_errors += 1
        log.debug("gauge source %s* failed: %r", prefix, exc)


def _gauge_number(value) -> float | int | None:
    """``value`` as an exportable number: bools and ints as int, finite floats; else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _kv(key: str, value: str | int) -> common_pb2.KeyValue:
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def build_export_request(
    stats: RpcStats,
    resource: resource_pb2.Resource,
    time_unix_nano: int,
    gauges: Mapping[str, float | int] | None = None,
) -> otlp_metrics_pb2.ExportMetricsServiceRequest:
    """One OTLP request with ``stats`` as a cumulative ``rpc.server.duration`` histogram,
    then one ``Gauge`` metric (one point, no attributes) per entry of ``gauges``
    (full name to value, as ``RpcStats.collect_gauges`` returns them).

    With no series and no gauges the request carries the resource alone: the
    receiver still learns that this instance is alive.
    """
    bounds = list(stats.bounds)
    points = [
        metrics_pb2.HistogramDataPoint(
            attributes=[_kv("rpc.method", s.method), _kv("rpc.grpc.status_code", s.code)],
            start_time_unix_nano=stats.start_time_ns,
            time_unix_nano=time_unix_nano,
            count=s.count,
            sum=s.sum,
            min=s.min,
            max=s.max,
            bucket_counts=s.bucket_counts,
            explicit_bounds=bounds,
        )
        for s in stats.snapshot()
    ]
    metrics = []
    if points:
        metrics.append(
            metrics_pb2.Metric(
                name=DURATION_METRIC,
                unit="ms",
                description="server-side RPC latency",
                histogram=metrics_pb2.Histogram(
                    data_points=points,
                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
                ),
            )
        )
    for name, value in (gauges or {}).items():
        number = (
            metrics_pb2.NumberDataPoint(time_unix_nano=time_unix_nano, as_int=value)
            if isinstance(value, int)
            else metrics_pb2.NumberDataPoint(time_unix_nano=time_unix_nano, as_double=value)
        )
        metrics.append(metrics_pb2.Metric(name=name, gauge=metrics_pb2.Gauge(data_points=[number])))
    scope = metrics_pb2.ScopeMetrics(
        scope=common_pb2.InstrumentationScope(name=SCOPE_NAME), metrics=metrics
    )
    return otlp_metrics_pb2.ExportMetricsServiceRequest(
        resource_metrics=[metrics_pb2.ResourceMetrics(resource=resource, scope_metrics=[scope])]
    )


class OtlpStatsExporter:
    """Pushes an ``RpcStats`` to an OTLP/gRPC metrics endpoint (host:port, plaintext).

    ``start()`` begins exporting every ``interval_s``; ``stop()`` ends that and
    makes one final export bounded by ``timeout_s`` (reading the gauge sources
    takes at most half of it). ``export_now()`` exports
    once (and works without ``start()``). Nothing here raises on export
    failure or waits longer than ``timeout_s`` per export; failures are counted
    in ``exports_failed`` and logged at debug level at most once per
    ``log_every_s``.
    """

    def __init__(
        self,
        stats: RpcStats,
        *,
        service: str,
        endpoint: str,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        instance_id: str | None = None,
        clock_ns: ClockNs = time.time_ns,
        log_every_s: float = 60.0,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive")
        self.stats = stats
        self.service = service
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.instance_id = instance_id or uuid.uuid4().hex
        self.clock_ns = clock_ns
        self.log_every_s = log_every_s
        self.resource = resource_pb2.Resource(
            attributes=[
                _kv("service.name", service),
                _kv("service.namespace", "clawmesh"),
                _kv("service.instance.id", self.instance_id),
            ]
        )
        self.exports_ok = 0
        self.exports_failed = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: otlp_metrics_grpc.MetricsServiceStub | None = None
        self._task: asyncio.Task | None = None
        self._last_log = -math.inf
        self._suppressed = 0

    async def start(self) -> None:
        """Start the periodic export task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"otlp-stats-{self.service}")

    async def stop(self) -> None:
        """Stop exporting, after one final export bounded by ``timeout_s``; never raises."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    if (current := asyncio.current_task()) is not None and current.cancelling():
                        raise  # we are being cancelled ourselves, not just the task
                except Exception:  # pragma: no cover - _run swallows its errors
                    log.debug("stats exporter task failed", exc_info=True)
            await self.export_now()
        finally:
            channel, self._channel, self._stub = self._channel, None, None
            if channel is not None:
                await channel.close(grace=None)

    async def export_now(self) -> bool:
        """Export the current stats once; True when the endpoint accepted them."""
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            gauges = await self.stats.collect_gauges(self.timeout_s / 2)
            request = build_export_request(self.stats, self.resource, self.clock_ns(), gauges)
            if self._stub is None:
                from clawmesh.shared.security import active  # TLS / mesh token as configured

                self._channel = active().channel(self.endpoint)
                self._stub = otlp_metrics_grpc.MetricsServiceStub(self._channel)
            # The deadline tells the server; wait_for bounds the whole call here.
            remaining = max(deadline - loop.time(), self.timeout_s / 2)
            await asyncio.wait_for(self._stub.Export(request, timeout=remaining), remaining)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let telemetry break the service
            self.exports_failed += 1
            self._log_failure(exc)
            return False
        self.exports_ok += 1
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.export_now()

    def _log_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_every_s:
            self._suppressed += 1
            return
        detail = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
        log.debug(
            "metrics export to %s failed: %s (%d similar failures not logged)",
            self.endpoint,
            detail,
            self._suppressed,
        )
        self._last_log, self._suppressed = now, 0
