"""The whole mesh as separate processes (the `clawmesh up` code path)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import START_ORDER, MeshProcesses, child_env, health_status
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from clawmesh.services.registry import by_name
from tests.conftest import free_port

pytestmark = pytest.mark.system


def mesh_env(tmp_path, **extra) -> dict[str, str]:
    env = {f"CLAWMESH_{name.upper()}__PORT": str(free_port()) for name in START_ORDER}
    env.update(
        CLAWMESH_MEMORY__DATA_DIR=str(tmp_path / "data"),
        CLAWMESH_TELEMETRY__EXPORT_INTERVAL_S="0.2",
        CLAWMESH_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
    return child_env(base, env)


def message(text: str, session: str = "sys-1", msg_id: str = "") -> common_pb2.InboundMessage:
    return common_pb2.InboundMessage(
        channel="telegram", sender="alice", session_id=session, content=text,
        channel_message_id=msg_id or text,
    )


def watch_exits(pids: Mapping[str, int]) -> tuple[dict[str, float], Callable[[], None]]:
    """Record when each process exits (monotonic time), as it happens: a pidfd becomes
    readable when its process exits, whoever reaps it. Returns (exit times, unwatch)."""
    loop = asyncio.get_running_loop()
    exits: dict[str, float] = {}
    fds: dict[str, int] = {}

    def on_exit(name: str) -> None:
        exits.setdefault(name, time.monotonic())
        loop.remove_reader(fds[name])

    for name, pid in pids.items():
        fds[name] = os.pidfd_open(pid)
        loop.add_reader(fds[name], on_exit, name)

    def unwatch() -> None:
        for fd in fds.values():
            loop.remove_reader(fd)
            os.close(fd)

    return exits, unwatch


async def assert_stopped_edge_first(exits: Mapping[str, float]) -> None:
    """Every service exited: ingest, then routing, then provider and memory, then metrics."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(exits) < len(START_ORDER):  # the pidfd callbacks run on this loop
        assert loop.time() < deadline, exits
        await asyncio.sleep(0.01)
    assert set(exits) == set(START_ORDER), exits
    by_time = sorted(exits, key=exits.__getitem__)
    assert by_time[:2] == ["ingest", "routing"], by_time
    assert set(by_time[2:4]) == {"provider", "memory"}, by_time
    assert by_time[4] == "metrics", by_time


@pytest.fixture
async def mesh(tmp_path):
    mesh = MeshProcesses(mesh_env(tmp_path))
    await mesh.start()
    yield mesh
    codes = await mesh.stop()
    assert all(code == 0 for code in codes.values()), codes


async def test_conversation_survives_a_memory_crash(mesh):
    async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        replies = []
        for text in ("my name is Alice", "I like tea", "what do you know?"):
            response = await ingest.Submit(ingest_pb2.SubmitRequest(message=message(text)), timeout=10)
            replies.append(response.reply.content)
        assert replies[2] == (
            'mock reply 3: you said "what do you know?"; 2 earlier turn(s), previously "I like tea"'
        )

        mesh.signal("memory", signal.SIGKILL)
        assert await mesh.wait_exit("memory", 10) == -signal.SIGKILL
        await mesh.restart("memory")

        async with grpc.aio.insecure_channel(mesh.target("memory")) as mchannel:
            memory = memory_pb2_grpc.MemoryServiceStub(mchannel)
            history = await memory.GetHistory(
                memory_pb2.GetHistoryRequest(session_id="sys-1"),
                metadata=(("x-clawmesh-tenant", "default"),), timeout=10,
            )
        assert [m.content for m in history.messages] == [
            "my name is Alice", replies[0], "I like tea", replies[1], "what do you know?", replies[2]
        ]
        # Routing reconnects to the new memory process within its 1 s reconnect backoff.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            try:
                response = await ingest.Submit(
                    ingest_pb2.SubmitRequest(message=message("still there?")), timeout=10
                )
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and loop.time() < deadline
                await asyncio.sleep(0.1)
        assert "3 earlier turn(s)" in response.reply.content


async def test_every_service_is_serving_and_reflects_its_api(mesh):
    for name in START_ORDER:
        async with grpc.aio.insecure_channel(mesh.target(name)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", by_name(name).grpc_name):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (name, service)
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            listed = {s.name async for r in call for s in r.list_services_response.service}
            assert {by_name(name).grpc_name, "grpc.health.v1.Health"} <= listed, name


async def test_metrics_sees_every_services_requests(mesh):
    async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        for i in range(4):
            await ingest.Submit(ingest_pb2.SubmitRequest(message=message(f"n{i}")), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await ingest.Submit(ingest_pb2.SubmitRequest(message=message("")), timeout=10)
    async with grpc.aio.insecure_channel(mesh.target("metrics")) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # services push every 0.2 s; wait for the pushes that cover our calls
            snap = await stub.GetSnapshot(metrics_pb2.GetSnapshotRequest(), timeout=5)
            by_name = {s.service: s.request_count for s in snap.services}
            wanted = {"ingest": 5, "routing": 4, "provider": 4, "memory": 8}
            if all(by_name.get(name, 0) >= n for name, n in wanted.items()):
                by_name = {s.service: s for s in snap.services}
                break
            assert loop.time() < deadline, snap
            await asyncio.sleep(0.1)
    ingest_snap = by_name["ingest"]
    # INVALID_ARGUMENT is the caller's fault, not a server error (counted by code only).
    assert ingest_snap.request_count == 5 and ingest_snap.error_count == 0
    [submit] = [m for m in ingest_snap.methods if m.method.endswith("/Submit")]
    assert dict(submit.status_counts) == {"OK": 4, "INVALID_ARGUMENT": 1}
    assert 0 < submit.latency.p50_ms <= submit.latency.p99_ms
    assert by_name["routing"].request_count == 4 and by_name["provider"].request_count == 4
    assert by_name["memory"].request_count == 8  # GetHistory + BatchAppend per message


async def test_cli_send_and_health_work_against_the_running_mesh(mesh):
    env = mesh.env
    cli = [sys.executable, "-m", "clawmesh.launcher.cli"]
    sent = await asyncio.to_thread(
        subprocess.run, [*cli, "send", "hi", "there", "--session", "cli-1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == 'mock reply 1: you said "hi there"; 0 earlier turn(s)'
    health = await asyncio.to_thread(
        subprocess.run, [*cli, "health"], env=env, capture_output=True, text=True, timeout=60,
    )
    assert health.returncode == 0, health.stdout + health.stderr
    assert health.stdout.count("SERVING") == 5


async def test_sigterm_drains_in_flight_refuses_new_and_exits_zero(tmp_path):
    log_path = tmp_path / "services.log"  # INFO logs: what a slow shutdown was doing
    log_file = log_path.open("wb")
    # Grace 5 s: the in-flight calls need 1.5 s; the 15 s wait below leaves 10 s for the
    # closers (each bounded at 5 s) even on a loaded machine.
    mesh = MeshProcesses(mesh_env(tmp_path, CLAWMESH_PROVIDER__MOCK_LATENCY_MS="1500",
                                  CLAWMESH_INGEST__GRACE_PERIOD_S="5",
                                  CLAWMESH_LOG_LEVEL="INFO"), stderr=log_file)
    await mesh.start()
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            calls = [
                ingest.SubmitStream(
                    ingest_pb2.SubmitStreamRequest(message=message(f"m{i}", session=f"d{i}")), timeout=20
                )
                for i in range(3)
            ]
            # Initial metadata arrives once ingest has admitted the message: now in flight.
            for call in calls:
                assert dict(await call.initial_metadata())["x-clawmesh-request-id"]
            mesh.signal("ingest", signal.SIGTERM)
            target = mesh.target("ingest")
            for _ in range(100):
                if await health_status(target, timeout_s=0.5) != "SERVING":
                    break
                await asyncio.sleep(0.02)  # polling another process's state
            async with grpc.aio.insecure_channel(target) as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ingest_pb2_grpc.IngestServiceStub(fresh).Submit(
                        ingest_pb2.SubmitRequest(message=message("late")), timeout=5
                    )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            for i, call in enumerate(calls):
                chunks = [r.chunk async for r in call]
                assert chunks[-1].final and f'you said "m{i}"' in chunks[-1].reply.content
                assert await call.code() == grpc.StatusCode.OK
        code = await mesh.wait_exit("ingest", 15)
        log_file.flush()
        assert code == 0, log_path.read_text(errors="replace")[-4000:]
    finally:
        await mesh.stop()
        log_file.close()


async def test_stop_goes_edge_first_and_in_flight_requests_complete(tmp_path):
    mesh = MeshProcesses(mesh_env(tmp_path, CLAWMESH_PROVIDER__MOCK_LATENCY_MS="1000"))
    await mesh.start()
    exits, unwatch = watch_exits({name: proc.pid for name, proc in mesh.procs.items()})
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
            call = ingest_pb2_grpc.IngestServiceStub(channel).SubmitStream(
                ingest_pb2.SubmitStreamRequest(message=message("in flight", session="stop-1")), timeout=20
            )
            # Initial metadata arrives once ingest has admitted the message: now in flight
            # (routing, memory and provider still have work to do for it).
            assert dict(await call.initial_metadata())["x-clawmesh-request-id"]
            stopping = asyncio.create_task(mesh.stop())
            chunks = [r.chunk async for r in call]
            assert await call.code() == grpc.StatusCode.OK
            assert chunks[-1].final and 'you said "in flight"' in chunks[-1].reply.content
        codes = await asyncio.wait_for(stopping, 30)
        assert codes == dict.fromkeys(START_ORDER, 0)
        await assert_stopped_edge_first(exits)
    finally:
        unwatch()
        await mesh.stop()


async def test_sighup_reloads_ingest_policy_without_a_restart(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("dedup: {ttl_s: 600}\n")
    mesh = MeshProcesses(mesh_env(tmp_path, CLAWMESH_INGEST__POLICY_FILE=str(policy)))
    await mesh.start()
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)

            async def send(text):
                return await ingest.Submit(ingest_pb2.SubmitRequest(message=message(text)), timeout=10)

            await send("before")
            policy.write_text("rate_limits: {rules: [{match: {tenant: '*'},"
                              " limits: [{name: after-hup, rate: 1, per: hour, burst: 1}]}]}\n")
            pid = mesh.procs["ingest"].pid
            os.kill(pid, signal.SIGHUP)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            refused = None
            while refused is None:  # the reload runs on ingest's loop: poll with a deadline
                assert loop.time() < deadline, "the new limit never applied"
                try:
                    await send("after")
                except grpc.aio.AioRpcError as exc:
                    refused = exc
                else:
                    await asyncio.sleep(0.05)
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "after-hup" in refused.details()
            assert mesh.procs["ingest"].pid == pid and mesh.procs["ingest"].poll() is None
    finally:
        await mesh.stop()


async def test_two_ingest_processes_share_dedup_and_one_global_limit_through_redis(tmp_path, redis_url):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"backend: {{kind: redis, redis_url: '{redis_url}'}}\n"
                      "rate_limits: {rules: [{match: {tenant: '*'},"
                      " limits: [{name: global, rate: 1, per: hour, burst: 4}]}]}\n")
    env = mesh_env(tmp_path, CLAWMESH_INGEST__POLICY_FILE=str(policy),
                   CLAWMESH_PROVIDER__MOCK_LATENCY_MS="300")
    mesh = MeshProcesses(env)
    await mesh.start()
    second = MeshProcesses({**env, "CLAWMESH_INGEST__PORT": str(free_port())}, services=("ingest",))
    try:
        await second.start()
        channels = [grpc.aio.insecure_channel(m.target("ingest")) for m in (mesh, second)]
        a, b = (ingest_pb2_grpc.IngestServiceStub(c) for c in channels)
        try:
            def submit(stub, text, msg_id):
                return stub.Submit(ingest_pb2.SubmitRequest(message=message(text, msg_id=msg_id)),
                                   timeout=10)

            # A webhook delivered twice, once to each replica, at the same time.
            replies = await asyncio.gather(submit(a, "hook", "hook-1"), submit(b, "hook", "hook-1"))
            assert replies[0].reply == replies[1].reply
            assert sorted(r.replayed for r in replies) == [False, True]
            # One quota of 4 for both processes: 2 used above, 2 left in all.
            await submit(a, "one", "m-1")
            await submit(b, "two", "m-2")
            for stub, text in ((a, "three"), (b, "four")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await submit(stub, text, text)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for c in channels:
                await c.close()
    finally:
        await second.stop()
        await mesh.stop()


async def test_health_verbose_shows_the_edge_gauges(mesh):
    async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        for _ in range(2):  # a message and its copy
            await ingest.Submit(ingest_pb2.SubmitRequest(message=message("twice", msg_id="v-1")),
                                timeout=10)
    cli = [sys.executable, "-m", "clawmesh.launcher.cli", "health", "--verbose"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # services push every 0.2 s; poll the CLI until ingest's push shows the copy
        done = await asyncio.to_thread(subprocess.run, cli, env=mesh.env, capture_output=True,
                                       text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        if "edge.dedup.replays = 1" in done.stdout:
            break
        assert loop.time() < deadline, done.stdout
        await asyncio.sleep(0.2)
    ingest_part = done.stdout.split("ingest", 1)[1]
    assert "edge.admission.available_permits = " in ingest_part, done.stdout
    assert "edge.dedup.unique_added = " in ingest_part
