"""MetricsAggregator and SpanLog with hand-built OTLP requests and a fake clock."""

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from clawmesh.services.metrics.aggregator import MetricsAggregator, SpanLog

SUBMIT = "/clawmesh.ingest.v1.IngestService/Submit"
CONVERSE = "/clawmesh.ingest.v1.IngestService/Converse"
BOUNDS = (10.0, 20.0, 30.0)
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def kv(key, value) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def resource(service="ingest", instance="i1") -> Resource:
    return Resource(attributes=[kv("service.name", service), kv("service.instance.id", instance)])


def point(method=SUBMIT, code=0, counts=(0, 10, 0, 0), bounds=BOUNDS, t=1, **extra):
    return metrics_pb2.HistogramDataPoint(
        attributes=[kv("rpc.method", method), kv("rpc.grpc.status_code", code)],
        time_unix_nano=t,
        count=sum(counts),
        bucket_counts=list(counts),
        explicit_bounds=list(bounds),
        **extra,
    )


def request(*points, service="ingest", instance="i1", temporality=CUMULATIVE, extra=()):
    metric = metrics_pb2.Metric(
        name="rpc.server.duration",
        unit="ms",
        histogram=metrics_pb2.Histogram(data_points=points, aggregation_temporality=temporality),
    )
    scope = metrics_pb2.ScopeMetrics(metrics=[metric, *extra])
    return ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(resource=resource(service, instance), scope_metrics=[scope])
        ]
    )


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def agg(clock):
    return MetricsAggregator(clock=clock, stale_after_s=600, max_series=100)


def test_counts_status_names_and_latency_per_method(agg, clock):
    agg.ingest(
        request(
            point(SUBMIT, 0, (0, 10, 0, 0), sum=150.0, min=11.0, max=19.0),
            point(SUBMIT, 3, (2, 0, 0, 0), sum=4.0, min=1.0, max=3.0),
            point(CONVERSE, 14, (0, 0, 0, 1), sum=40.0, min=40.0, max=40.0),
        )
    )
    [svc] = agg.snapshot()
    # INVALID_ARGUMENT is a refusal, not a server error: only the UNAVAILABLE call counts.
    assert (svc.service, svc.request_count, svc.error_count, svc.instances) == ("ingest", 13, 1, 1)
    assert svc.last_report_time == clock.now
    converse, submit = svc.methods  # sorted by method name
    assert (submit.method, submit.request_count) == (SUBMIT, 12)
    assert submit.status_counts == {"OK": 10, "INVALID_ARGUMENT": 2}
    assert converse.status_counts == {"UNAVAILABLE": 1}
    assert submit.latency.mean_ms == pytest.approx(154.0 / 12)
    assert submit.latency.max_ms == 19.0
    # 12 points: 2 in (1, 10], 10 in (10, 19]; rank 6 is 4/10 into (10, 19].
    assert submit.latency.p50_ms == pytest.approx(10.0 + 9.0 * 0.4)
    assert svc.latency.max_ms == 40.0
    assert converse.latency.p99_ms == 40.0


def test_error_count_counts_server_faults_only_and_status_counts_every_code(agg):
    refusals = {3: 1, 5: 2, 6: 3, 7: 4, 16: 5, 9: 6, 11: 7, 1: 8, 8: 9}  # code: count
    faults = {2: 10, 13: 20, 14: 30, 4: 40, 15: 50, 12: 60}
    points = [
        point(SUBMIT, code, (n, 0, 0, 0)) for code, n in {0: 100, **refusals, **faults}.items()
    ]
    agg.ingest(request(*points))
    [svc] = agg.snapshot()
    assert svc.request_count == 100 + sum(refusals.values()) + sum(faults.values())
    assert svc.error_count == sum(faults.values()) == 210
    [submit] = svc.methods
    assert submit.status_counts == {
        "OK": 100,
        "CANCELLED": 8,
        "UNKNOWN": 10,
        "INVALID_ARGUMENT": 1,
        "DEADLINE_EXCEEDED": 40,
        "NOT_FOUND": 2,
        "ALREADY_EXISTS": 3,
        "PERMISSION_DENIED": 4,
        "RESOURCE_EXHAUSTED": 9,
        "FAILED_PRECONDITION": 6,
        "OUT_OF_RANGE": 7,
        "UNIMPLEMENTED": 60,
        "INTERNAL": 20,
        "UNAVAILABLE": 30,
        "DATA_LOSS": 50,
        "UNAUTHENTICATED": 5,
    }


def test_cumulative_points_replace_and_instances_add_up(agg):
    agg.ingest(request(point(counts=(0, 5, 0, 0), t=1)))
    agg.ingest(request(point(counts=(0, 8, 0, 0), t=2)))
    agg.ingest(request(point(counts=(1, 0, 0, 0), t=2), instance="i2"))
    [svc] = agg.snapshot()
    assert (svc.request_count, svc.instances) == (9, 2)
    assert agg.series_count == 2


def test_late_older_cumulative_point_is_ignored(agg):
    agg.ingest(request(point(counts=(0, 8, 0, 0), t=5)))
    agg.ingest(request(point(counts=(0, 5, 0, 0), t=4)))
    assert agg.snapshot()[0].request_count == 8


def test_delta_points_add_up(agg):
    agg.ingest(request(point(counts=(0, 5, 0, 0), sum=75.0, max=15.0), temporality=DELTA))
    agg.ingest(request(point(counts=(1, 0, 0, 1), sum=45.0, max=40.0), temporality=DELTA))
    [svc] = agg.snapshot()
    [method] = svc.methods
    assert method.request_count == 7
    assert method.latency.mean_ms == pytest.approx(120.0 / 7)
    assert method.latency.max_ms == 40.0


def test_delta_point_with_new_bounds_restarts_the_series(agg):
    agg.ingest(request(point(counts=(0, 5, 0, 0)), temporality=DELTA))
    agg.ingest(request(point(counts=(3, 0), bounds=(50.0,)), temporality=DELTA))
    assert agg.snapshot()[0].request_count == 3


def test_other_metrics_are_counted_and_ignored(agg):
    counter = metrics_pb2.Metric(
        name="process.runtime.gc_count",
        sum=metrics_pb2.Sum(data_points=[metrics_pb2.NumberDataPoint(as_int=1)] * 3),
    )
    other_hist = metrics_pb2.Metric(
        name="rpc.client.duration", histogram=metrics_pb2.Histogram(data_points=[point()])
    )
    agg.ingest(request(point(), extra=[counter, other_hist]))
    assert (agg.points_received, agg.points_ignored) == (5, 4)
    assert agg.snapshot()[0].request_count == 10
    assert agg.snapshot()[0].instance_details[0].gauges == {}


# --- gauges ----------------------------------------------------------------------------------


def gauge(name, *points):
    return metrics_pb2.Metric(name=name, gauge=metrics_pb2.Gauge(data_points=points))


def num(value, t=1, **extra):
    if isinstance(value, int):
        return metrics_pb2.NumberDataPoint(as_int=value, time_unix_nano=t, **extra)
    return metrics_pb2.NumberDataPoint(as_double=value, time_unix_nano=t, **extra)


LOAD = "clawmesh.edge.admission.load_percentage"
REJECTED = "clawmesh.edge.admission.rejected_count"


def test_gauges_keep_the_latest_value_per_service_and_instance(agg, clock):
    agg.ingest(request(point(), extra=[gauge(LOAD, num(12.5)), gauge(REJECTED, num(3))]))
    agg.ingest(request(extra=[gauge(LOAD, num(80.0))], instance="i2"))
    agg.ingest(request(extra=[gauge(LOAD, num(1.0))], service="routing", instance="r1"))
    clock.now += 5
    agg.ingest(request(extra=[gauge(LOAD, num(40.0, t=2)), gauge(REJECTED, num(4, t=2))]))
    assert agg.gauge_count == 4
    [ingest] = agg.snapshot("ingest")
    assert [(d.instance_id, d.last_report_time, d.gauges) for d in ingest.instance_details] == [
        ("i1", 1_005.0, {LOAD: 40.0, REJECTED: 4.0}),
        ("i2", 1_000.0, {LOAD: 80.0}),
    ]
    assert (ingest.instances, ingest.request_count) == (2, 10)  # gauges are not requests
    assert agg.gauges("routing") == {"r1": {LOAD: 1.0}}
    assert agg.gauges("nope") == {}


def test_a_late_older_gauge_point_loses_and_equal_times_replace(agg):
    agg.ingest(request(extra=[gauge(LOAD, num(40.0, t=5))]))
    agg.ingest(request(extra=[gauge(LOAD, num(10.0, t=4))]))
    assert agg.gauges("ingest") == {"i1": {LOAD: 40.0}}
    agg.ingest(request(extra=[gauge(LOAD, num(41.0, t=5))]))
    assert agg.gauges("ingest") == {"i1": {LOAD: 41.0}}


def test_gauge_points_with_attributes_are_kept_apart_and_empty_ones_ignored(agg):
    p1 = num(1.0, attributes=[kv("state", "used"), kv("cpu", 0)])
    p2 = num(2.0, attributes=[kv("cpu", 1), kv("state", "used")])
    no_value = metrics_pb2.NumberDataPoint(time_unix_nano=1)
    flagged = num(9.0, flags=metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)
    agg.ingest(request(extra=[gauge("system.cpu.utilization", p1, p2, no_value, flagged)]))
    assert agg.gauges("ingest") == {"i1": {
        "system.cpu.utilization{cpu=0,state=used}": 1.0,
        "system.cpu.utilization{cpu=1,state=used}": 2.0,
    }}
    assert (agg.points_received, agg.points_ignored) == (4, 2)


def test_gauge_cap_drops_new_gauges_and_expiry_frees_them(clock):
    agg = MetricsAggregator(clock=clock, max_gauges=2, stale_after_s=600)
    agg.ingest(request(extra=[gauge("g.a", num(1)), gauge("g.b", num(2)), gauge("g.c", num(3))]))
    assert (agg.gauge_count, agg.points_dropped) == (2, 1)
    agg.ingest(request(extra=[gauge("g.a", num(5, t=2)), gauge("g.d", num(4))], instance="i2"))
    assert agg.gauges("ingest") == {"i1": {"g.a": 1.0, "g.b": 2.0}, "i2": {}}
    agg.ingest(request(extra=[gauge("g.a", num(5, t=2))]))  # a known gauge still updates
    assert agg.gauges("ingest")["i1"] == {"g.a": 5.0, "g.b": 2.0}
    clock.now += 601
    assert agg.snapshot() == [] and agg.gauge_count == 0
    agg.ingest(request(extra=[gauge("g.c", num(3))], instance="i3"))
    assert agg.gauges("ingest") == {"i3": {"g.c": 3.0}}


def test_gauges_of_an_instance_past_the_instance_cap_are_dropped(clock):
    agg = MetricsAggregator(clock=clock, max_instances=1)
    agg.ingest(request(extra=[gauge(LOAD, num(1.0))], instance="a"))
    agg.ingest(request(extra=[gauge(LOAD, num(2.0))], instance="b"))
    assert agg.points_dropped == 1
    assert agg.gauges("ingest") == {"a": {LOAD: 1.0}}


def test_malformed_and_no_value_points_are_ignored(agg):
    bad = point(counts=(1, 2))  # two counts for three bounds
    empty = point(flags=metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)
    agg.ingest(request(bad, empty))
    assert agg.points_ignored == 2
    [svc] = agg.snapshot()  # the instance reported, with nothing to count
    assert (svc.request_count, svc.instances, svc.methods) == (0, 1, [])


def test_status_code_as_string_and_semconv_service_attribute(agg):
    p = metrics_pb2.HistogramDataPoint(
        attributes=[
            kv("rpc.service", "clawmesh.ingest.v1.IngestService"),
            kv("rpc.method", "Submit"),
            kv("rpc.grpc.status_code", "NOT_FOUND"),
        ],
        count=1,
        bucket_counts=[1, 0, 0, 0],
        explicit_bounds=BOUNDS,
    )
    agg.ingest(request(p, point(code="14")))
    [method] = agg.snapshot()[0].methods
    assert method.method == SUBMIT
    assert method.status_counts == {"NOT_FOUND": 1, "UNAVAILABLE": 10}


def test_silent_instances_expire_with_their_series(agg, clock):
    agg.ingest(request(point(), instance="old"))
    clock.now += 300
    agg.ingest(request(point(), instance="new"))
    clock.now += 301  # "old" silent 601 s, "new" 301 s
    [svc] = agg.snapshot()
    assert (svc.instances, svc.request_count) == (1, 10)
    assert svc.last_report_time == 1_300.0
    assert (agg.series_count, agg.series_expired) == (1, 1)
    clock.now += 300
    assert agg.snapshot() == []
    assert agg.series_count == 0


def test_instance_exactly_at_the_limit_is_kept(agg, clock):
    agg.ingest(request(point()))
    clock.now += 600
    assert agg.snapshot()[0].instances == 1


def test_series_cap_drops_new_series_but_updates_known_ones(clock):
    agg = MetricsAggregator(clock=clock, max_series=2)
    agg.ingest(request(*(point(f"/svc/M{i}") for i in range(3))))
    assert (agg.series_count, agg.points_dropped) == (2, 1)
    agg.ingest(request(point("/svc/M0", counts=(0, 20, 0, 0), t=2), point("/svc/M9")))
    [svc] = agg.snapshot()
    assert [m.method for m in svc.methods] == ["/svc/M0", "/svc/M1"]
    assert svc.request_count == 30
    assert agg.points_dropped == 2


def test_instance_cap_drops_points_of_new_instances(clock):
    agg = MetricsAggregator(clock=clock, max_instances=1)
    agg.ingest(request(point(), instance="a"))
    agg.ingest(request(point(), instance="b"))
    assert agg.points_dropped == 1
    assert agg.snapshot()[0].instances == 1


def test_snapshot_filters_by_service(agg):
    agg.ingest(request(point(), service="ingest"))
    agg.ingest(request(point(), service="routing"))
    assert [s.service for s in agg.snapshot()] == ["ingest", "routing"]
    assert [s.service for s in agg.snapshot("routing")] == ["routing"]
    assert agg.snapshot("nope") == []


def test_resource_without_name_is_unknown_service(agg):
    req = request(point())
    req.resource_metrics[0].resource.Clear()
    agg.ingest(req)
    assert agg.snapshot()[0].service == "unknown_service"


def spans_request(service, n, start=0):
    spans = [
        trace_pb2.Span(
            trace_id=bytes([i % 256]) * 16,
            span_id=bytes([i % 256]) * 8,
            name=f"op{i}",
            start_time_unix_nano=1_000_000,
            end_time_unix_nano=3_500_000,
        )
        for i in range(start, start + n)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource(service), scope_spans=[trace_pb2.ScopeSpans(spans=spans)]
            )
        ]
    )


def test_span_log_counts_per_service_and_keeps_a_bounded_ring():
    log = SpanLog(capacity=3, max_services=2)
    log.ingest(spans_request("routing", 2))
    log.ingest(spans_request("memory", 4, start=2))
    log.ingest(spans_request("provider", 1))  # over the service cap: counted in total only
    assert log.counts == {"routing": 2, "memory": 4}
    assert log.spans_received == 7
    assert [s.name for s in log.recent] == ["op4", "op5", "op0"]
    last = log.recent[-1]
    assert (last.trace_id, last.span_id) == ("00" * 16, "00" * 8)
    assert (last.service, last.duration_ms) == ("provider", pytest.approx(2.5))
