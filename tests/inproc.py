"""The whole mesh inside the test's event loop: real servers on port 0, real channels."""

from __future__ import annotations

from contextlib import asynccontextmanager

from clawmesh.launcher.runner import build_service
from clawmesh.shared.settings import MeshSettings

# Dependencies first, so each service is built knowing where the others listen.
ORDER = ("metrics", "memory", "provider", "routing", "ingest")


@asynccontextmanager
async def inproc_mesh(settings: MeshSettings, meter=None, services=ORDER):
    servers = {}
    try:
        for name in services:
            server = await build_service(name, settings, meter)
            await server.start()
            settings.server(name).address = server.address
            servers[name] = server
        yield servers
    finally:
        for name in reversed(list(servers)):
            await servers[name].stop(0)
