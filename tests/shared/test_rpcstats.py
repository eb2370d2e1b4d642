"""RpcStats (exact buckets, gauge sources), is_server_fault, the OTLP request, and
OtlpStatsExporter end to end against the real metrics service on port 0."""

from __future__ import annotations

import asyncio
import logging
import math

import grpc
import pytest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as otlp_pb2

from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.services.metrics.aggregator import MetricsAggregator
from clawmesh.shared.rpcstats import (
    OVERFLOW_METHOD,
    OtlpStatsExporter,
    RpcStats,
    SeriesSnapshot,
    build_export_request,
    is_server_fault,
)
from clawmesh.shared.settings import MeshSettings
from clawmesh.shared.telemetry import LATENCY_BUCKETS_MS
from tests.conftest import free_port

SUBMIT = "/clawmesh.ingest.v1.IngestService/Submit"
CONVERSE = "/clawmesh.ingest.v1.IngestService/Converse"
N_BUCKETS = len(LATENCY_BUCKETS_MS) + 1  # 28: 27 bounds, the last bucket open above


def buckets(**at: int) -> tuple[int, ...]:
    """Bucket counts with ``b<i>=n`` set, e.g. ``buckets(b0=1, b27=2)``."""
    out = [0] * N_BUCKETS
    for key, n in at.items():
        out[int(key[1:])] = n
    return tuple(out)


class FakeClockNs:
    def __init__(self, now: int = 1_700_000_000_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


# --- RpcStats ----------------------------------------------------------------------------


def test_default_bounds_are_the_shared_latency_buckets():
    stats = RpcStats()
    assert stats.bounds == tuple(float(b) for b in LATENCY_BUCKETS_MS)
    assert len(stats.bounds) == 27


def test_values_on_a_bound_fall_in_the_bucket_it_closes():
    # Bucket i is (bounds[i-1], bounds[i]]: 0.25 is in bucket 0, just above it in bucket 1.
    stats = RpcStats()
    for ms in (0.0, 0.1, 0.25):
        stats.record(SUBMIT, 0, ms)
    stats.record(SUBMIT, 0, 0.2500001)
    stats.record(SUBMIT, 0, 0.5)
    stats.record(SUBMIT, 0, 2.5)  # (2, 3] is bucket 6
    stats.record(SUBMIT, 0, 3.0)
    stats.record(SUBMIT, 0, 30_000.0)  # the last bound: bucket 26
    stats.record(SUBMIT, 0, 30_000.5)  # above every bound: bucket 27
    stats.record(SUBMIT, 0, 1e9)
    [s] = stats.snapshot()
    assert s.bucket_counts == buckets(b0=3, b1=2, b6=2, b26=1, b27=2)
    assert s.count == 10
    assert s.sum == pytest.approx(0.1 + 0.25 + 0.2500001 + 0.5 + 2.5 + 3.0 + 30_000 + 30_000.5 + 1e9)
    assert (s.min, s.max) == (0.0, 1e9)


def test_every_bound_maps_to_its_own_bucket():
    stats = RpcStats()
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        stats.record(SUBMIT, i, float(bound))  # one series per code: one call each
    for s in stats.snapshot():
        assert s.bucket_counts == buckets(**{f"b{s.code}": 1})


def test_series_are_per_method_and_code_sorted_with_count_sum_min_max():
    stats = RpcStats()
    stats.record(SUBMIT, 3, 0.3)
    stats.record(SUBMIT, 0, 12.0)
    stats.record(CONVERSE, 14, 40.0)
    stats.record(SUBMIT, 0, 8.0)
    stats.record(SUBMIT, 0, 14.0)
    assert stats.snapshot() == [
        SeriesSnapshot(CONVERSE, 14, buckets(b14=1), 1, 40.0, 40.0, 40.0),
        SeriesSnapshot(SUBMIT, 0, buckets(b10=1, b11=2), 3, 34.0, 8.0, 14.0),
        SeriesSnapshot(SUBMIT, 3, buckets(b1=1), 1, 0.3, 0.3, 0.3),
    ]
    assert len(stats) == 3


def test_snapshot_is_a_copy():
    stats = RpcStats()
    stats.record(SUBMIT, 0, 1.0)
    before = stats.snapshot()
    stats.record(SUBMIT, 0, 1.0)
    assert before[0].count == 1 and before[0].bucket_counts == buckets(b3=1)
    assert stats.snapshot()[0].bucket_counts == buckets(b3=2)


@pytest.mark.parametrize("bad", [-1.0, math.nan, -math.inf])
def test_negative_or_nan_durations_count_as_zero(bad):
    stats = RpcStats()
    stats.record(SUBMIT, 0, bad)
    stats.record(SUBMIT, 0, 1.0)
    [s] = stats.snapshot()
    assert s.bucket_counts == buckets(b0=1, b3=1)
    assert (s.count, s.sum, s.min, s.max) == (2, 1.0, 0.0, 1.0)


def test_custom_bounds_and_validation():
    stats = RpcStats((10, 20, 30))
    for ms in (5, 10, 15, 20, 25, 31):
        stats.record(SUBMIT, 0, ms)
    assert stats.snapshot()[0].bucket_counts == (2, 2, 1, 1)
    with pytest.raises(ValueError, match="increasing"):
        RpcStats((10, 10, 20))


def test_series_past_the_cap_share_one_overflow_series_per_code():
    stats = RpcStats(max_series=2)
    stats.record("/a", 0, 1.0)
    stats.record("/b", 0, 1.0)
    stats.record("/c", 12, 1.0)
    stats.record("/d", 12, 1.0)
    stats.record("/a", 0, 1.0)  # known series still count normally
    stats.record("/e", 0, 1.0)
    counts = {(s.method, s.code): s.count for s in stats.snapshot()}
    assert counts == {("/a", 0): 2, ("/b", 0): 1, (OVERFLOW_METHOD, 12): 2, (OVERFLOW_METHOD, 0): 1}


def test_start_time_comes_from_the_injected_clock():
    assert RpcStats(clock_ns=FakeClockNs(42)).start_time_ns == 42


# --- is_server_fault ------------------------------------------------------------------------

SERVER_FAULTS = {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_server_faults_are_exactly_the_servers_own_failures(code):
    expected = code.name in SERVER_FAULTS
    assert is_server_fault(code.value[0]) is expected
    assert is_server_fault(code) is expected


def test_refusals_are_not_server_faults_and_unknown_numbers_are():
    for name in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
                 "UNAUTHENTICATED", "FAILED_PRECONDITION", "OUT_OF_RANGE", "CANCELLED",
                 "RESOURCE_EXHAUSTED", "ABORTED"):
        assert not is_server_fault(grpc.StatusCode[name])
    assert is_server_fault(17) and is_server_fault(-1)


# --- the OTLP request -----------------------------------------------------------------------


def _attrs(kvs) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def test_export_request_is_a_cumulative_ms_histogram_with_one_point_per_series():
    stats = RpcStats(clock_ns=FakeClockNs(1_000))
    stats.record(SUBMIT, 0, 2.5)
    stats.record(SUBMIT, 0, 40.0)
    stats.record(CONVERSE, 14, 12.0)
    exporter = OtlpStatsExporter(stats, service="ingest", endpoint="unused:1", instance_id="i-1")
    req = build_export_request(stats, exporter.resource, 5_000)

    [rm] = req.resource_metrics
    assert _attrs(rm.resource.attributes) == {
        "service.name": "ingest",
        "service.namespace": "clawmesh",
        "service.instance.id": "i-1",
    }
    [sm] = rm.scope_metrics
    assert sm.scope.name == "clawmesh"
    [metric] = sm.metrics
    assert (metric.name, metric.unit, metric.WhichOneof("data")) == ("rpc.server.duration", "ms", "histogram")
    assert metric.histogram.aggregation_temporality == otlp_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    converse, submit = metric.histogram.data_points
    assert _attrs(submit.attributes) == {"rpc.method": SUBMIT, "rpc.grpc.status_code": 0}
    assert submit.attributes[1].value.WhichOneof("value") == "int_value"
    assert _attrs(converse.attributes) == {"rpc.method": CONVERSE, "rpc.grpc.status_code": 14}
    assert list(submit.explicit_bounds) == list(stats.bounds)
    assert tuple(submit.bucket_counts) == buckets(b6=1, b14=1)
    assert (submit.count, submit.sum, submit.min, submit.max) == (2, 42.5, 2.5, 40.0)
    assert (submit.start_time_unix_nano, submit.time_unix_nano) == (1_000, 5_000)


def test_empty_stats_export_the_resource_alone():
    stats = RpcStats()
    exporter = OtlpStatsExporter(stats, service="memory", endpoint="unused:1")
    [rm] = build_export_request(stats, exporter.resource, 1).resource_metrics
    assert [list(sm.metrics) for sm in rm.scope_metrics] == [[]]
    assert len(exporter.instance_id) == 32  # a uuid4 hex per process (per exporter)


# --- gauges --------------------------------------------------------------------------------


def _gauges(req) -> dict[str, tuple[str, float, int]]:
    """Gauge metrics of ``req``: name -> (value kind, value, time_unix_nano)."""
    out = {}
    for metric in req.resource_metrics[0].scope_metrics[0].metrics:
        if metric.WhichOneof("data") == "gauge":
            [p] = metric.gauge.data_points
            kind = p.WhichOneof("value")
            assert not p.attributes and not metric.unit
            out[metric.name] = (kind, getattr(p, kind), p.time_unix_nano)
    return out


async def test_gauges_go_out_in_the_same_request_with_exact_values():
    stats = RpcStats()
    stats.record(SUBMIT, 0, 2.5)
    stats.add_gauges("edge", lambda: {"admission.load_percentage": 12.5,
                                      "admission.waiting_count": 3,
                                      "admission.available_permits": 0,
                                      "shadow.replayed": True,
                                      "skipped.none": None,
                                      "skipped.nan": math.nan,
                                      "skipped.inf": math.inf})

    async def dedup():
        await asyncio.sleep(0)
        return {"current_entries": 42, "replays": 7}

    stats.add_gauges("edge.dedup", dedup)
    gauges = await stats.collect_gauges()
    assert gauges == {
        "clawmesh.edge.admission.available_permits": 0,
        "clawmesh.edge.admission.load_percentage": 12.5,
        "clawmesh.edge.admission.waiting_count": 3,
        "clawmesh.edge.dedup.current_entries": 42,
        "clawmesh.edge.dedup.replays": 7,
        "clawmesh.edge.shadow.replayed": 1,
    }
    assert list(gauges) == sorted(gauges)
    exporter = OtlpStatsExporter(stats, service="ingest", endpoint="unused:1", instance_id="i-1")
    req = build_export_request(stats, exporter.resource, 5_000, gauges)

    [sm] = req.resource_metrics[0].scope_metrics
    assert [m.name for m in sm.metrics] == ["rpc.server.duration", *gauges]
    assert _gauges(req) == {
        "clawmesh.edge.admission.available_permits": ("as_int", 0, 5_000),
        "clawmesh.edge.admission.load_percentage": ("as_double", 12.5, 5_000),
        "clawmesh.edge.admission.waiting_count": ("as_int", 3, 5_000),
        "clawmesh.edge.dedup.current_entries": ("as_int", 42, 5_000),
        "clawmesh.edge.dedup.replays": ("as_int", 7, 5_000),
        "clawmesh.edge.shadow.replayed": ("as_int", 1, 5_000),
    }
    assert stats.gauge_errors == 0


async def test_failing_slow_or_bad_gauge_sources_are_skipped_and_counted():
    stats = RpcStats()

    def boom():
        raise RuntimeError("broken")

    async def slow():
        await asyncio.sleep(10)
        return {"never": 1}

    async def async_boom():
        raise OSError("backend down")

    stats.add_gauges("a", boom)
    stats.add_gauges("b", slow)
    stats.add_gauges("c", async_boom)
    stats.add_gauges("d", lambda: None)  # not a mapping
    stats.add_gauges("e", lambda: {"ok": 1.5})
    stats.add_gauges("e", lambda: {"ok": 2.5, "more": 1})  # a later source wins a name
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await stats.collect_gauges(timeout_s=0.1) == {"clawmesh.e.more": 1, "clawmesh.e.ok": 2.5}
    assert loop.time() - started < 2.0
    assert stats.gauge_errors == 4


def test_gauge_group_must_be_a_dotted_name():
    for bad in ("", ".edge", "edge."):
        with pytest.raises(ValueError):
            RpcStats().add_gauges(bad, dict)


def test_exporter_rejects_non_positive_interval_or_timeout():
    with pytest.raises(ValueError):
        OtlpStatsExporter(RpcStats(), service="x", endpoint="h:1", interval_s=0)
    with pytest.raises(ValueError):
        OtlpStatsExporter(RpcStats(), service="x", endpoint="h:1", timeout_s=-1)


# --- OtlpStatsExporter against the real metrics service -------------------------------------


class RecordingAggregator(MetricsAggregator):
    """The real aggregator that also keeps every request it received."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = []
        self._arrived = asyncio.Event()

    def ingest(self, request) -> None:
        self.requests.append(request)
        super().ingest(request)
        self._arrived.set()

    async def wait_for_requests(self, n: int) -> None:
        while len(self.requests) < n:
            self._arrived.clear()
            await self._arrived.wait()


@pytest.fixture
def aggregator():
    return RecordingAggregator()


@pytest.fixture
async def server(aggregator):
    from clawmesh.services.metrics.main import build

    server = await build(MeshSettings(metrics={"port": 0}), aggregator=aggregator)
    await server.start()
    yield server
    await server.stop(grace_s=0)


@pytest.fixture
async def snapshot(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)

        async def get(service: str = "") -> metrics_pb2.GetSnapshotResponse:
            return await stub.GetSnapshot(metrics_pb2.GetSnapshotRequest(service=service), timeout=5)

        yield get


def record_known_latencies(stats: RpcStats) -> None:
    for _ in range(90):
        stats.record(SUBMIT, 0, 2.5)  # bucket (2, 3]
    for _ in range(9):
        stats.record(SUBMIT, 0, 40.0)  # bucket (30, 50]
    stats.record(SUBMIT, 0, 400.0)  # bucket (300, 500]
    for _ in range(5):
        stats.record(SUBMIT, 3, 0.3)  # INVALID_ARGUMENT: a refusal, bucket (0.25, 0.5]
    for _ in range(3):
        stats.record(CONVERSE, 14, 12.0)  # UNAVAILABLE: a server fault
    stats.record(CONVERSE, 13, 20.0)  # INTERNAL: a server fault


async def test_exported_stats_show_up_exactly_in_the_snapshot(server, snapshot, aggregator):
    stats = RpcStats()
    exporter = OtlpStatsExporter(
        stats, service="ingest", endpoint=server.address, interval_s=60, timeout_s=5,
        clock_ns=FakeClockNs(1_700_000_000_000_000_000),
    )
    record_known_latencies(stats)
    try:
        assert await exporter.export_now() is True
    finally:
        await exporter.stop()

    [svc] = (await snapshot()).services
    assert (svc.service, svc.instances) == ("ingest", 1)
    assert (svc.request_count, svc.error_count) == (109, 4)
    converse, submit = svc.methods
    assert (submit.method, submit.request_count) == (SUBMIT, 105)
    assert dict(submit.status_counts) == {"OK": 100, "INVALID_ARGUMENT": 5}
    assert (converse.method, converse.request_count) == (CONVERSE, 4)
    assert dict(converse.status_counts) == {"UNAVAILABLE": 3, "INTERNAL": 1}
    latency = submit.latency
    assert 2.0 <= latency.p50_ms <= 3.0  # ranks 6..95 are the 2.5 ms calls
    assert 2.0 <= latency.p90_ms <= 3.0
    assert 30.0 <= latency.p99_ms <= 50.0  # rank 103.95: a 40 ms call, bucket (30, 50]
    assert latency.max_ms == pytest.approx(400.0)
    assert latency.mean_ms == pytest.approx((90 * 2.5 + 9 * 40 + 400 + 5 * 0.3) / 105)
    assert 12.0 <= converse.latency.p50_ms <= 15.0  # min 12, bucket (10, 15]
    assert converse.latency.max_ms == pytest.approx(20.0)

    # What went over the wire: the resource and the injected clock's timestamps.
    first = aggregator.requests[0]
    assert _attrs(first.resource_metrics[0].resource.attributes) == {
        "service.name": "ingest",
        "service.namespace": "clawmesh",
        "service.instance.id": exporter.instance_id,
    }
    [metric] = first.resource_metrics[0].scope_metrics[0].metrics
    assert {p.time_unix_nano for p in metric.histogram.data_points} == {1_700_000_000_000_000_000}
    assert (exporter.exports_ok, exporter.exports_failed) == (2, 0)  # export_now + stop's


async def test_exported_gauges_are_the_latest_per_instance_in_the_aggregator(server, aggregator):
    values = {"admission.load_percentage": 25.0, "admission.rejected_count": 2}
    stats = RpcStats()
    stats.add_gauges("edge", lambda: values)
    clock = FakeClockNs(1_000)
    exporters = [
        OtlpStatsExporter(stats, service="ingest", endpoint=server.address, instance_id=i,
                          clock_ns=clock)
        for i in ("i-1", "i-2")
    ]
    try:
        assert await exporters[0].export_now()
        values.update({"admission.load_percentage": 50.0, "admission.rejected_count": 9})
        clock.now = 2_000
        assert await exporters[0].export_now()
        assert await exporters[1].export_now()
        values["admission.load_percentage"] = 75.0
        assert await exporters[1].export_now()
        assert aggregator.gauges("ingest") == {
            "i-1": {"clawmesh.edge.admission.load_percentage": 50.0,
                    "clawmesh.edge.admission.rejected_count": 9.0},
            "i-2": {"clawmesh.edge.admission.load_percentage": 75.0,
                    "clawmesh.edge.admission.rejected_count": 9.0},
        }
        [svc] = aggregator.snapshot("ingest")
        assert (svc.request_count, svc.instances) == (0, 2)  # gauges are not requests
    finally:
        for exporter in exporters:
            await exporter.stop()


async def test_repeated_cumulative_exports_are_not_double_counted(server, snapshot):
    stats = RpcStats()
    exporter = OtlpStatsExporter(stats, service="ingest", endpoint=server.address, interval_s=60)
    try:
        record_known_latencies(stats)
        assert await exporter.export_now()
        assert await exporter.export_now()
        stats.record(SUBMIT, 0, 1.0)
        assert await exporter.export_now()
        [svc] = (await snapshot("ingest")).services
        assert svc.request_count == 110
    finally:
        await exporter.stop()


async def test_stop_makes_a_final_export_so_counts_are_complete(server, snapshot):
    stats = RpcStats()
    exporter = OtlpStatsExporter(stats, service="routing", endpoint=server.address, interval_s=3600)
    await exporter.start()
    for _ in range(7):
        stats.record("/clawmesh.routing.v1.RoutingService/Route", 0, 5.0)
    assert list((await snapshot()).services) == []  # no periodic export in an hour
    await exporter.stop()
    [svc] = (await snapshot()).services
    assert (svc.service, svc.request_count, svc.error_count) == ("routing", 7, 0)
    assert exporter.exports_ok == 1


async def test_start_exports_periodically(server, snapshot, aggregator):
    stats = RpcStats()
    exporter = OtlpStatsExporter(stats, service="memory", endpoint=server.address, interval_s=0.02)
    stats.record("/clawmesh.memory.v1.MemoryService/GetHistory", 5, 1.0)  # NOT_FOUND
    await exporter.start()
    await exporter.start()  # idempotent: still one task
    try:
        async with asyncio.timeout(10):
            await aggregator.wait_for_requests(3)
    finally:
        await exporter.stop()
    [svc] = (await snapshot("memory")).services
    assert (svc.request_count, svc.error_count) == (1, 0)
    assert dict(svc.methods[0].status_counts) == {"NOT_FOUND": 1}


async def test_empty_stats_still_announce_the_instance(server, snapshot):
    exporter = OtlpStatsExporter(RpcStats(), service="provider", endpoint=server.address)
    assert await exporter.export_now()
    await exporter.stop()
    [svc] = (await snapshot()).services
    assert (svc.service, svc.instances, svc.request_count) == ("provider", 1, 0)


async def test_refused_connection_never_raises_and_logs_rate_limited(caplog):
    caplog.set_level(logging.DEBUG, logger="clawmesh.shared.rpcstats")
    stats = RpcStats()
    stats.record(SUBMIT, 0, 1.0)
    exporter = OtlpStatsExporter(
        stats, service="ingest", endpoint=f"127.0.0.1:{free_port()}", interval_s=60, timeout_s=2
    )
    assert await exporter.export_now() is False
    assert await exporter.export_now() is False
    await exporter.stop()  # its final export fails too, quietly
    assert (exporter.exports_ok, exporter.exports_failed) == (0, 3)
    failures = [r for r in caplog.records if "metrics export" in r.getMessage()]
    assert len(failures) == 1  # one per log_every_s (60 s)
    assert failures[0].levelno == logging.DEBUG


async def test_stop_against_a_silent_endpoint_returns_within_its_timeout():
    # A TCP listener that accepts and never speaks HTTP/2: every export hangs until
    # its deadline; stop() must still return after about timeout_s.
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader, writer):
        accepted.append(writer)

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    stats = RpcStats()
    stats.record(SUBMIT, 0, 1.0)
    timeout_s = 0.3
    exporter = OtlpStatsExporter(
        stats, service="ingest", endpoint=f"127.0.0.1:{port}", interval_s=0.01, timeout_s=timeout_s
    )
    loop = asyncio.get_running_loop()
    try:
        await exporter.start()
        await asyncio.sleep(0.05)  # a periodic export is in flight, hanging
        started = loop.time()
        await exporter.stop()
        elapsed = loop.time() - started
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert elapsed < timeout_s + 1.0  # the final export's bound, plus slack for a slow CI box
    assert exporter.exports_ok == 0 and exporter.exports_failed >= 1
