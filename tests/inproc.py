"""The whole mesh inside the test's event loop: real servers on port 0, real channels."""

from __future__ import annotations

from contextlib import asynccontextmanager

from clawmesh.services.registry import START_ORDER, by_name
from clawmesh.shared.settings import MeshSettings


@asynccontextmanager
async def inproc_mesh(settings: MeshSettings, stats=None, services=START_ORDER):
    """Start ``services`` (dependencies first, so each knows where the others listen)."""
    servers = {}
    try:
        for name in services:
            server = await by_name(name).build(settings, stats)
            await server.start()
            settings.server(name).address = server.address
            servers[name] = server
        yield servers
    finally:
        for name in reversed(list(servers)):
            await servers[name].stop(0)
