"""Fixtures shared by every test layer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from clawmesh.shared.settings import MeshSettings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trailing_status(error):
    """The google.rpc.Status carried by a failed call (or None)."""
    from google.rpc import status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


@pytest.fixture
def settings(tmp_path) -> MeshSettings:
    """In-process settings: every port 0, memory under tmp_path, no OTLP export."""
    return MeshSettings(
        telemetry={"enabled": False},
        use_uvloop=False,
        ingest={"port": 0},
        routing={"port": 0},
        provider={"port": 0},
        memory={"port": 0, "data_dir": tmp_path / "memory"},
        metrics={"port": 0},
    )


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free port for the whole test session."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A flushed Redis for one test."""
    redis_server.flush()
    return redis_server.url
