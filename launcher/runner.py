"""Run one service as a process: `clawmesh serve <service>` (the container entrypoint).

Every service is built through the registry (``clawmesh.services.registry``);
this module does the process-level parts once for all of them: logging, the RPC
figures' periodic OTLP push and, with ``prometheus_port``, their /metrics endpoint
(``shared.prometheus``), the tracer provider (``shared.tracing``), the event loop
(uvloop when available), garbage collector tuning and signal handling.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import uuid

from clawmesh.services.registry import by_name
from clawmesh.shared.logs import configure_logging
from clawmesh.shared.rpc.server import MeshServer
from clawmesh.shared.settings import MeshSettings
from clawmesh.shared.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger(__name__)

# Young-generation threshold: the default (700) runs a collection every few
# requests; collections are cheap but not free, and full ones stall the loop.
GC_THRESHOLD = (50_000, 20, 100)


async def build_service(name: str, settings: MeshSettings, stats=None) -> MeshServer:
    """Build (not start) service ``name``. ``stats`` (an RpcStats) receives its RPC figures."""
    return await by_name(name).build(settings, stats)


def freeze_heap() -> None:
    """Move everything allocated at start-up out of the collector's sight.

    Modules, descriptors, stubs and settings live for the whole process; left
    to the collector, every full collection walks them all (11–45 ms pauses
    measured under load). After ``gc.freeze()`` only objects made while serving
    are ever scanned, and the higher threshold makes collections rarer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def _serve(name: str, settings: MeshSettings) -> None:
    stats = exporter = tracer_provider = None
    instance_id = uuid.uuid4().hex  # one identity for the figures and the spans
    if settings.telemetry.enabled and name != "metrics":
        from clawmesh.shared.rpcstats import OtlpStatsExporter, RpcStats

        stats = RpcStats()
        exporter = OtlpStatsExporter(
            stats, service=name, endpoint=settings.metrics.target(),
            interval_s=settings.telemetry.export_interval_s,
            timeout_s=settings.telemetry.export_timeout_s, instance_id=instance_id,
        )
    prometheus_port = settings.server(name).prometheus_port
    if prometheus_port is not None and stats is None:
        # Scraped only: the metrics service (or one with telemetry off) pushes nothing over OTLP.
        from clawmesh.shared.rpcstats import RpcStats

        stats = RpcStats()
    if name != "metrics":  # metrics traces nothing: its own exports would feed back into it
        # Before the build: the interceptor chains take the provider when they are made.
        tracer_provider = configure_tracing(name, settings, os.environ, instance_id)
    server = await build_service(name, settings, stats)
    if prometheus_port is not None:  # /metrics reads the same RpcStats: no second instrumentation
        from clawmesh.shared.prometheus import start_endpoint

        endpoint = await start_endpoint(stats, name, settings.server(name).host, prometheus_port)
        server.on_stop(endpoint.close)
    if exporter is not None:
        await exporter.start()
        server.on_stop(exporter.stop)  # runs after the drain: the last figures go out
    if tracer_provider is not None:
        server.on_stop(shutdown_tracing)  # after the drain: every call's spans have ended
    await server.serve_until_signal(on_serving=freeze_heap)


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
