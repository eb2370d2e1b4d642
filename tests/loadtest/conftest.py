"""Shared fixtures: an in-process echo server on its own thread and event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clawmesh.loadtest.config import load_config
from clawmesh.loadtest.echo_server import build_echo_server

ECHO_PROTO = "protos/clawmesh/testing/v1/echo.proto"


class ThreadServer:
    """An echo server running on a background thread's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("echo server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = build_echo_server()
        self.loop.run_until_complete(self.server.start())
        self.address = self.server.address
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop)
        fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def echo():
    server = ThreadServer()
    yield server
    server.close()


@pytest.fixture
def echo_cfg(echo):
    """Build a normalized config against the echo server: echo_cfg("Echo", total=10, ...)."""

    def make(method: str, proto: bool = True, **keys):
        base = {"host": echo.address, "insecure": True,
                "call": f"clawmesh.testing.v1.EchoService.{method}", "cpus": 1}
        if proto:
            base["proto"] = ECHO_PROTO
        return load_config(None, {**base, **keys})

    return make


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
