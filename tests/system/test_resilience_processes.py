"""Breakers and retries through the running mesh (separate processes, real sockets)."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from google.rpc import error_details_pb2

from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import MeshProcesses
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from tests.conftest import trailing_status
from tests.system.test_mesh_processes import mesh_env, message

pytestmark = pytest.mark.system


async def submit(ingest, text: str, deadline_s: float, session: str = "res-1"):
    return await ingest.Submit(ingest_pb2.SubmitRequest(message=message(text, session)), timeout=deadline_s)


GENERATE = "/clawmesh.provider.v1.ProviderService/Generate"


async def routing_gauge(mesh: MeshProcesses, name: str, accept, wait_s: float = 5.0) -> float | None:
    """The first value routing pushes for gauge ``name`` that ``accept`` takes (None: none)."""
    deadline = time.monotonic() + wait_s
    async with grpc.aio.insecure_channel(mesh.target("metrics")) as channel:
        metrics = metrics_pb2_grpc.MetricsServiceStub(channel)
        while time.monotonic() < deadline:
            snap = await metrics.GetSnapshot(metrics_pb2.GetSnapshotRequest(service="routing"), timeout=2)
            for svc in snap.services:
                for inst in svc.instance_details:
                    if accept(inst.gauges.get(name)):
                        return inst.gauges[name]
            await asyncio.sleep(0.1)  # the services push every 0.2 s in these tests
    return None


async def test_a_stopped_provider_trips_the_breaker_then_one_probe_closes_it(tmp_path):
    mesh = MeshProcesses(mesh_env(tmp_path, CLAWMESH_BREAKER__ENABLED="true",
                                  CLAWMESH_BREAKER__OPEN_TIMEOUT_S="1"))
    await mesh.start()
    stopped = False
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            await submit(ingest, "warm up", 10)
            mesh.signal("provider", signal.SIGSTOP)
            stopped = True
            # Until the breaker trips, calls wait out their deadline (the provider hangs).
            # Routing's own timer ends its call to the provider just before the caller's
            # deadline (the reserve per hop): a failure for its breaker. Should the caller's
            # cancel reach routing first, that call counts as neither; so allow a few more.
            slow = 0
            while True:
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await submit(ingest, f"hanging {slow}", 1.0)
                if info.value.code() == grpc.StatusCode.UNAVAILABLE:
                    break
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started > 0.9  # it did wait
                slow += 1
                assert slow <= 6, "the breaker never tripped"
            # Tripped: each call now fails at once with UNAVAILABLE and a RetryInfo.
            fast = []
            for i in range(5):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await submit(ingest, f"refused {i}", 1.0)
                fast.append(time.monotonic() - started)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
                assert "circuit breaker" in info.value.details()
                status = trailing_status(info.value)
                retry = error_details_pb2.RetryInfo()
                assert any(d.Unpack(retry) for d in status.details)
            assert slow >= 3 and max(fast) < 0.3, (slow, fast)  # well under the 1 s call timeout
            # Seen from outside: routing exports the breaker's state as a gauge (2: open; after
            # the 1 s open timeout it reads 3, half-open, until a probe goes).
            gauge = f"clawmesh.breaker.state{{peer={mesh.target('provider')},method={GENERATE}}}"
            assert await routing_gauge(mesh, gauge, lambda v: v in (2.0, 3.0)) in (2.0, 3.0)
            mesh.signal("provider", signal.SIGCONT)
            stopped = False
            # No operator action: after the open timeout one probe goes through and closes it.
            deadline = time.monotonic() + 10
            while True:
                try:
                    reply = await submit(ingest, "are you back?", 5.0)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            assert 'you said "are you back?"' in reply.reply.content
            for i in range(3):
                assert (await submit(ingest, f"again {i}", 5.0)).reply.content
    finally:
        if stopped:
            mesh.signal("provider", signal.SIGCONT)
        codes = await mesh.stop()
    assert all(code == 0 for code in codes.values()), codes


async def test_a_memory_crash_is_bridged_by_retries_and_nothing_is_stored_twice(tmp_path):
    # Retries generous enough to outlast a restart (~1 s); throttling out of the way.
    mesh = MeshProcesses(mesh_env(tmp_path, CLAWMESH_RETRY__MAX_ATTEMPTS="40",
                                  CLAWMESH_RETRY__BACKOFF_BASE_S="0.1", CLAWMESH_RETRY__BACKOFF_MAX_S="0.2",
                                  CLAWMESH_RETRY__THROTTLE_MAX_TOKENS="1000"))
    await mesh.start()
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            for text in ("first", "second"):
                await submit(ingest, text, 10)
            mesh.signal("memory", signal.SIGKILL)
            assert await mesh.wait_exit("memory", 10) == -signal.SIGKILL
            # Sent while memory is down: routing's GetHistory (idempotent) is retried until
            # the new memory process answers; the caller never resends.
            pending = asyncio.create_task(submit(ingest, "third", 15))
            await asyncio.sleep(0.3)  # it is retrying against the dead process by now
            assert not pending.done()
            await mesh.restart("memory")
            reply = await pending
            assert "2 earlier turn(s)" in reply.reply.content
            replies = [reply.reply.content]
        async with grpc.aio.insecure_channel(mesh.target("memory")) as mchannel:
            memory = memory_pb2_grpc.MemoryServiceStub(mchannel)
            history = await memory.GetHistory(memory_pb2.GetHistoryRequest(session_id="res-1"),
                                              metadata=(("x-clawmesh-tenant", "default"),), timeout=10)
        contents = [m.content for m in history.messages]
        assert contents[0::2] == ["first", "second", "third"]  # each turn stored once
        assert len(contents) == 6 and contents[5] == replies[0]
    finally:
        codes = await mesh.stop()
    assert all(code == 0 for code in codes.values()), codes
