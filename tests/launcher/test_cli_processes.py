"""`clawmesh up` (what `make run` runs) and `clawmesh chat`, as a user would run them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import START_ORDER, MeshProcesses, health_status
from tests.system.test_mesh_processes import assert_stopped_edge_first, mesh_env, message, watch_exits

pytestmark = pytest.mark.system


async def _read_until(stream, marker: str, timeout_s: float) -> str:
    seen = []

    async def read():
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError("output ended before " + repr(marker) + ":\n" + "".join(seen))
            seen.append(line.decode())
            if marker in seen[-1]:
                return "".join(seen)

    return await asyncio.wait_for(read(), timeout_s)


async def test_up_prints_endpoints_and_stops_cleanly_on_ctrl_c(tmp_path):
    env = mesh_env(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clawmesh.launcher.cli", "up", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        banner = await _read_until(proc.stdout, "Ctrl-C stops the mesh", 60)
        assert "every service is SERVING" in banner
        for name in ("ingest", "routing", "provider", "memory", "metrics"):
            port = env[f"CLAWMESH_{name.upper()}__PORT"]
            assert f"{name}" in banner and f"127.0.0.1:{port}" in banner
        assert "clawmesh chat" in banner
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_chat_holds_a_conversation(tmp_path):
    mesh = MeshProcesses(mesh_env(tmp_path))
    await mesh.start()
    try:
        chat = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "clawmesh.launcher.cli", "chat", "--session", "c1"],
            input="hello\n\nhow are you\n/quit\n", env=mesh.env, capture_output=True, text=True,
            timeout=60,
        )
    finally:
        await mesh.stop()
    assert chat.returncode == 0, chat.stderr
    assert 'bot> mock reply 1: you said "hello"' in chat.stdout
    assert 'mock reply 2: you said "how are you"; 1 earlier turn(s), previously "hello"' in chat.stdout


async def test_services_stop_when_up_is_killed(tmp_path):
    env = mesh_env(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clawmesh.launcher.cli", "up", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    await _read_until(proc.stdout, "Ctrl-C stops the mesh", 60)
    proc.kill()  # no chance to clean up: the children must notice by themselves
    await proc.wait()
    target = f"127.0.0.1:{env['CLAWMESH_INGEST__PORT']}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await health_status(target, timeout_s=0.5) != "UNREACHABLE":
        assert loop.time() < deadline, "ingest still running after its supervisor died"
        await asyncio.sleep(0.1)  # polling another process's state


def _services_of(pid: int) -> dict[str, int]:
    """The `clawmesh serve <name>` children of ``pid``, by service name."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        if "serve" in argv:
            found[argv[argv.index("serve") + 1]] = int(child)
    return found


async def test_ctrl_c_stops_services_edge_first_and_in_flight_requests_complete(tmp_path):
    env = mesh_env(tmp_path, CLAWMESH_PROVIDER__MOCK_LATENCY_MS="1000")
    # Its own session, as in a terminal: Ctrl-C signals the whole foreground process group.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clawmesh.launcher.cli", "up", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )
    unwatch = None
    try:
        await _read_until(proc.stdout, "Ctrl-C stops the mesh", 60)
        services = _services_of(proc.pid)
        assert set(services) == set(START_ORDER), services
        # The services are out of the terminal's reach: only `clawmesh up` gets the Ctrl-C.
        assert all(os.getpgid(pid) != proc.pid for pid in services.values())
        exits, unwatch = watch_exits(services)
        target = f"127.0.0.1:{env['CLAWMESH_INGEST__PORT']}"
        async with grpc.aio.insecure_channel(target) as channel:
            call = ingest_pb2_grpc.IngestServiceStub(channel).SubmitStream(
                ingest_pb2.SubmitStreamRequest(message=message("in flight", session="up-1")), timeout=20
            )
            assert dict(await call.initial_metadata())["x-clawmesh-request-id"]  # admitted
            os.killpg(proc.pid, signal.SIGINT)
            chunks = [r.chunk async for r in call]
            assert await call.code() == grpc.StatusCode.OK
            assert chunks[-1].final and 'you said "in flight"' in chunks[-1].reply.content
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await assert_stopped_edge_first(exits)
    finally:
        if unwatch is not None:
            unwatch()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_config_file_is_accepted_before_or_after_the_command():
    from clawmesh.launcher.cli import build_parser

    parser = build_parser()
    for argv in (["--config", "f.yaml", "config", "check"], ["config", "check", "--config", "f.yaml"]):
        assert parser.parse_args(argv).config == "f.yaml", argv
    assert getattr(parser.parse_args(["config", "check"]), "config", None) is None
