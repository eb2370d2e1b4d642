"""Run the whole mesh as local processes: the code path of `clawmesh up` and the system tests.

    mesh = MeshProcesses(env)            # env: CLAWMESH_* settings for every child
    await mesh.start()                   # spawns `clawmesh serve <name>` x5, waits for SERVING
    ...
    await mesh.stop()                    # SIGTERM, drain, SIGKILL stragglers
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clawmesh.launcher.runner import SERVICE_NAMES
from clawmesh.shared.settings import SERVICES, MeshSettings, load_settings

# Leaves first, so the first requests find their dependencies up.
START_ORDER = ("metrics", "memory", "provider", "routing", "ingest")


async def health_status(target: str, service: str = "", timeout_s: float = 1.0) -> str:
    """The grpc.health.v1 status name of ``service`` at ``target`` (or UNREACHABLE / error)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


class MeshError(RuntimeError):
    """The mesh could not be started."""


class MeshProcesses:
    """Five `clawmesh serve` child processes sharing one settings environment."""

    def __init__(self, env: Mapping[str, str], services: tuple[str, ...] = START_ORDER,
                 stderr=None) -> None:
        self.env = dict(env)
        self.settings: MeshSettings = load_settings(self.env)  # fail fast, before spawning
        self.services = services
        self.stderr = stderr
        self.procs: dict[str, subprocess.Popen] = {}

    def target(self, name: str) -> str:
        return self.settings.server(name).target()

    def spawn(self, name: str) -> subprocess.Popen:
        if name not in SERVICES:
            raise MeshError(f"unknown service {name!r}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "clawmesh.launcher.cli", "serve", name],
            env=self.env, stdin=subprocess.DEVNULL, stderr=self.stderr,
            preexec_fn=_die_with_parent,
        )
        self.procs[name] = proc
        return proc

    async def wait_serving(self, name: str, timeout_s: float = 30.0) -> float:
        """Wait until ``name`` reports SERVING; returns the seconds it took."""
        started = time.monotonic()
        delay = 0.02
        while True:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise MeshError(f"{name} exited with code {proc.returncode} while starting")
            status = await health_status(self.target(name), SERVICE_NAMES[name], timeout_s=0.5)
            if status == "SERVING":
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise MeshError(f"{name} not SERVING after {timeout_s:.0f}s (last: {status})")
            await asyncio.sleep(delay)  # polling a child process we don't control
            delay = min(delay * 2, 0.25)

    async def start(self, timeout_s: float = 30.0) -> float:
        """Spawn every service and wait until all are SERVING; returns the cold-start time."""
        started = time.monotonic()
        for name in self.services:
            self.spawn(name)
        try:
            await asyncio.gather(*(self.wait_serving(n, timeout_s) for n in self.services))
        except BaseException:
            await self.stop(grace_s=1.0)
            raise
        return time.monotonic() - started

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    async def wait_exit(self, name: str, timeout_s: float) -> int | None:
        try:
            return await asyncio.to_thread(self.procs[name].wait, timeout_s)
        except subprocess.TimeoutExpired:
            return None

    async def restart(self, name: str, timeout_s: float = 30.0) -> None:
        self.spawn(name)
        await self.wait_serving(name, timeout_s)

    def exited(self) -> dict[str, int]:
        """Children that have exited, with their exit codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    async def stop(self, grace_s: float | None = None) -> dict[str, int | None]:
        """SIGTERM every child (ingest first), wait for the drain, SIGKILL what is left."""
        for name in reversed(START_ORDER):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        if grace_s is None:
            grace_s = max((self.settings.server(n).grace_period_s for n in self.procs), default=0.0)
        codes = {}
        for name in list(self.procs):
            codes[name] = await self.wait_exit(name, grace_s + 2.0)
            if codes[name] is None:
                self.procs[name].kill()
                codes[name] = self.procs[name].wait()
        return codes


# Looked up here, not in the forked child: a child of a threaded process must not import.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM (a graceful stop) if the supervisor dies (Linux only)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_env(base: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base)
    env.update(overrides or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
