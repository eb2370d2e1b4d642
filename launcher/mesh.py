"""Run the whole mesh as local processes: the code path of `clawmesh up` and the system tests.

    mesh = MeshProcesses(env)            # env: CLAWMESH_* settings for every child
    await mesh.start()                   # spawns `clawmesh serve <name>` x5, waits for SERVING
    ...
    await mesh.stop()                    # edge first: SIGTERM, drain, exit, then the next
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clawmesh.services.registry import NAMES as SERVICES
from clawmesh.services.registry import START_ORDER, by_name
from clawmesh.shared.security import Security
from clawmesh.shared.settings import MeshSettings, load_settings

# stop() runs START_ORDER (leaves first) reversed: edge first, so a draining service's
# dependencies are still up. A service gets its grace period + STOP_MARGIN_S to exit
# before SIGKILL.
STOP_MARGIN_S = 2.0


def tool_credentials(settings: MeshSettings, name: str) -> grpc.ChannelCredentials | None:
    """How the CLI (identity ``client`` in ``security.cert_dir``) reaches service ``name``."""
    return Security(settings.security).channel_credentials(edge=name == "ingest")


async def health_status(target: str, service: str = "", timeout_s: float = 1.0,
                        credentials: grpc.ChannelCredentials | None = None) -> str:
    """The grpc.health.v1 status name of ``service`` at ``target`` (or UNREACHABLE / error)."""
    channel = (grpc.aio.insecure_channel(target) if credentials is None
               else grpc.aio.secure_channel(target, credentials))
    async with channel:
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
            [sys.executable, "-c", _CHILD_BOOT, str(os.getpid()), "serve", name],
            env=self.env, stdin=subprocess.DEVNULL, stderr=self.stderr,
            # Own process group: a terminal's Ctrl-C reaches only the supervisor, which
            # then stops the services in order (not all at once).
            process_group=0,
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
            status = await health_status(self.target(name), by_name(name).grpc_name, timeout_s=0.5,
                                         credentials=tool_credentials(self.settings, name))
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
        """Stop the children edge first: ingest, routing, provider, memory, metrics.

        Each one is SIGTERM'd only after the one before it has exited: it drains its
        in-flight calls while everything it depends on is still up. Each gets its grace
        period (``grace_s`` if given) + STOP_MARGIN_S to exit, then SIGKILL. Returns
        the exit codes.
        """
        order = [n for n in reversed(START_ORDER) if n in self.procs]
        order += [n for n in self.procs if n not in order]
        codes: dict[str, int | None] = {}
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            grace = self.settings.server(name).grace_period_s if grace_s is None else grace_s
            codes[name] = await self.wait_exit(name, grace + STOP_MARGIN_S)
            if codes[name] is None:
                proc.kill()
                codes[name] = await asyncio.to_thread(proc.wait)
        return codes


# The child's first lines: SIGTERM (a graceful stop) when the supervisor dies (Linux), then
# `clawmesh serve <name>`. Done in the child rather than in a preexec_fn, so spawning needs
# no fork of this multi-threaded process: with a preexec_fn, gRPC's fork handlers run in the
# forked copy and can abort it (SIGABRT, "epoll_wait error: Bad file descriptor").
_CHILD_BOOT = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit("clawmesh: the supervisor exited while this service was starting")
from clawmesh.launcher.cli import main
sys.exit(main(sys.argv[2:]))
"""


def child_env(base: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base)
    env.update(overrides or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
