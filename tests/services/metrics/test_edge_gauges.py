"""Ingest's edge-gate stats as OTLP gauges, from the gate to the metrics aggregator.

In process: ``build(settings, stats)`` registers the gate's sources on the RpcStats.
As processes: a real ingest (with routing, provider, memory) pushes them to a metrics
server running in the test, whose aggregator the test reads.
"""

from __future__ import annotations

import asyncio
import types

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import MeshProcesses
from clawmesh.services.ingest.main import DedupGauges, register_edge_gauges
from clawmesh.services.metrics.aggregator import MetricsAggregator
from clawmesh.shared.dedup.core import DedupStats
from clawmesh.shared.rpcstats import RpcStats
from tests.inproc import inproc_mesh
from tests.system.test_mesh_processes import mesh_env

EDGE = "clawmesh.edge."


def inbound(msg_id: str) -> common_pb2.InboundMessage:
    return common_pb2.InboundMessage(channel="telegram", sender="u1", session_id="s1",
                                     content="hi", channel_message_id=msg_id)


async def submit_twice(target: str) -> None:
    """One message and a copy of it: one unique claim, one replay."""
    async with grpc.aio.insecure_channel(target) as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        replies = [await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("m-1")), timeout=10)
                   for _ in range(2)]
    assert [r.replayed for r in replies] == [False, True]


EXPECTED_AFTER_A_COPY = {
    EDGE + "admission.load_percentage": 0,
    EDGE + "admission.rejected_count": 0,
    EDGE + "admission.waiting_count": 0,
    EDGE + "dedup.coalesced": 0,
    EDGE + "dedup.current_entries": 1,
    EDGE + "dedup.duplicates_found": 1,
    EDGE + "dedup.replays": 1,
    EDGE + "dedup.unique_added": 1,
}


async def test_ingest_registers_the_gate_and_dedup_stats_as_gauges(settings):
    stats = RpcStats()
    async with inproc_mesh(settings, stats) as servers:
        before = await stats.collect_gauges()
        await submit_twice(servers["ingest"].address)
        after = await stats.collect_gauges()
    assert {k: after[k] for k in EXPECTED_AFTER_A_COPY} == EXPECTED_AFTER_A_COPY
    assert before[EDGE + "dedup.unique_added"] == 0
    assert after[EDGE + "admission.available_permits"] >= 1
    assert not any(k.startswith(EDGE + "ratelimit.") for k in after)  # no rules, no limiter
    assert stats.gauge_errors == 0


async def test_no_stats_no_gauges(settings):
    async with inproc_mesh(settings, None, services=("ingest",)):
        pass  # build() with stats=None registers nothing and does not fail


class SlowDedup:
    """``stats()`` answers at once except when ``gate`` is clear (a slow Redis SCAN)."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def stats(self) -> DedupStats:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        return DedupStats(unique_added=n, current_entries=None if n == 2 else 5)


async def test_a_slow_dedup_read_never_loses_the_counters():
    dedup = SlowDedup()
    gate = types.SimpleNamespace(dedup=dedup, stats=lambda: {"admission.waiting_count": 2})
    source = DedupGauges(lambda: gate, wait_s=0.05)
    assert (await source())["unique_added"] == 1
    dedup.gate.clear()
    slow = await source()  # read 2 hangs: the last values, at once
    assert (slow["unique_added"], slow["current_entries"]) == (1, 5)
    assert (await source())["unique_added"] == 1 and dedup.calls == 2  # still that one read
    dedup.gate.set()
    await asyncio.sleep(0.01)  # read 2 finishes between exports: kept for the next one
    assert dedup.calls == 2
    fresh = await source()  # takes read 2, then read 3 answers in time
    assert (fresh["unique_added"], fresh["current_entries"], dedup.calls) == (3, 5, 3)

    stats = RpcStats()
    register_edge_gauges(stats, lambda: gate)
    dedup.gate.clear()
    gauges = await stats.collect_gauges(timeout_s=1.0)  # the first read hangs: no dedup yet
    assert gauges == {EDGE + "admission.waiting_count": 2}
    dedup.gate.set()
    gauges = await stats.collect_gauges(timeout_s=1.0)  # read 4 taken, read 5 in time
    assert (gauges[EDGE + "dedup.unique_added"], gauges[EDGE + "dedup.current_entries"]) == (5, 5)
    assert stats.gauge_errors == 0


async def test_an_unanswered_entry_count_is_left_out_not_sent_as_zero():
    class Unreachable:
        async def stats(self) -> DedupStats:
            return DedupStats(replays=2, backend_failures=1, current_entries=None)

    values = await DedupGauges(lambda: types.SimpleNamespace(dedup=Unreachable()))()
    assert (values["replays"], values["backend_failures"]) == (2, 1)
    assert "current_entries" not in values


@pytest.mark.system
async def test_a_real_ingest_process_pushes_its_edge_gauges_to_the_metrics_endpoint(tmp_path):
    from clawmesh.services.metrics.main import build

    mesh = MeshProcesses(mesh_env(tmp_path), services=("memory", "provider", "routing", "ingest"))
    aggregator = MetricsAggregator()
    metrics = await build(mesh.settings, aggregator=aggregator)  # on the mesh's metrics port
    await metrics.start()
    try:
        await mesh.start()
        try:
            await submit_twice(mesh.target("ingest"))
            async with asyncio.timeout(20):  # pushes every 0.2 s (mesh_env)
                while True:
                    [gauges] = aggregator.gauges("ingest").values() or [{}]
                    if gauges.get(EDGE + "dedup.replays") == 1:
                        break
                    await asyncio.sleep(0.1)
        finally:
            codes = await mesh.stop()
    finally:
        await metrics.stop(grace_s=0)
    assert all(code == 0 for code in codes.values()), codes
    [(instance_id, gauges)] = aggregator.gauges("ingest").items()
    assert len(instance_id) == 32
    assert {k: gauges[k] for k in EXPECTED_AFTER_A_COPY} == EXPECTED_AFTER_A_COPY
    [routing] = aggregator.gauges("routing").values()  # reported: its breakers only, no edge
    assert routing and all(k.startswith("clawmesh.breaker.") for k in routing)
    assert {v for k, v in routing.items() if k.startswith("clawmesh.breaker.state{")} == {1.0}  # closed
    [ingest] = aggregator.snapshot("ingest")
    assert ingest.request_count == 2  # the histogram came in the same pushes
