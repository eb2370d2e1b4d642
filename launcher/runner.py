"""Run one service as a process: `clawmesh serve <service>` (the container entrypoint).

Every service package has ``main.build(settings, meter) -> MeshServer``; this
module does the process-level parts once for all of them: logging, telemetry,
the event loop (uvloop when available) and signal handling.
"""

from __future__ import annotations

import asyncio
import importlib
import logging

from clawmesh.shared.logs import configure_logging
from clawmesh.shared.rpc.server import MeshServer
from clawmesh.shared.settings import SERVICES, MeshSettings

log = logging.getLogger(__name__)

SERVICE_NAMES = {
    "ingest": "clawmesh.ingest.v1.IngestService",
    "routing": "clawmesh.routing.v1.RoutingService",
    "provider": "clawmesh.provider.v1.ProviderService",
    "memory": "clawmesh.memory.v1.MemoryService",
    "metrics": "clawmesh.metrics.v1.MetricsService",
}


async def build_service(name: str, settings: MeshSettings, meter=None) -> MeshServer:
    """Build (not start) service ``name``. ``meter`` receives its RPC metrics."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}")
    module = importlib.import_module(f"clawmesh.services.{name}.main")
    return await module.build(settings, meter)


async def _serve(name: str, settings: MeshSettings) -> None:
    provider = None
    meter = None
    if settings.telemetry.enabled and name != "metrics":
        from clawmesh.shared.telemetry import otlp_meter_provider

        provider = otlp_meter_provider(
            name,
            settings.metrics.target(),
            settings.telemetry.export_interval_s,
            settings.telemetry.export_timeout_s,
        )
        meter = provider.get_meter("clawmesh")
    server = await build_service(name, settings, meter)
    try:
        await server.serve_until_signal()
    finally:
        if provider is not None:
            provider.shutdown(timeout_millis=settings.telemetry.export_timeout_s * 1000)


def serve(name: str, settings: MeshSettings) -> int:
    """Run service ``name`` until SIGTERM/SIGINT; returns the exit code."""
    configure_logging(name, settings.log_level, settings.log_format)
    run = asyncio.run
    if settings.use_uvloop:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
    run(_serve(name, settings))
    return 0
