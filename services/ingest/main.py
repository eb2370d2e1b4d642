"""Build the ingest service: the edge, over a typed routing client.

With ``stats`` (an RpcStats, as the launcher passes when telemetry is on) the edge
gate's figures go out with every OTLP push as gauges: ``clawmesh.edge.*`` from
``gate.stats()`` (admission, rate limits, shadow counts) and ``clawmesh.edge.dedup.*``
from ``await gate.dedup.stats()``, read at export time (an async source: its entry
count may ask Redis, so it is never read on a request's path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict

from clawmesh.ingest.v1 import ingest_pb2_grpc
from clawmesh.services.ingest.core import Ingest
from clawmesh.services.ingest.edge import EdgeGate
from clawmesh.services.ingest.servicer import IngestServicer
from clawmesh.services.registry import by_name
from clawmesh.services.routing.client import RoutingClient
from clawmesh.shared.policy import PolicyError, load_policy
from clawmesh.shared.rpc.channels import ChannelPool
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings

log = logging.getLogger(__name__)

RETIRE_AFTER_S = 60.0  # replaced parts of the gate are closed this long after a reload


async def build(settings: MeshSettings, stats=None) -> MeshServer:
    pool = ChannelPool(settings, settings.ingest.max_message_bytes)
    gate = EdgeGate.from_policy(load_policy(settings.ingest.policy_file))
    ingest = Ingest(pool.client(RoutingClient, settings.routing.target()), settings, gate)
    if stats is not None:
        register_edge_gauges(stats, lambda: ingest.gate)  # the gate in use at each export
    servicer = IngestServicer(ingest, settings.ingest.converse_max_in_flight)
    server = create_server(
        settings.ingest,
        [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer)],
        by_name("ingest").grpc_services,
        server_chain(stats),
    )
    server.on_stop(pool.close)
    server.on_stop(lambda: ingest.gate.close())  # the gate in use at stop time
    server.on_reload(lambda: reload_policy(ingest, settings.ingest.policy_file))
    return server


def register_edge_gauges(stats, current_gate: Callable[[], EdgeGate]) -> None:
    """Export the gate's stats through ``stats`` (an RpcStats) as ``clawmesh.edge.*`` gauges;
    ``current_gate()`` is read at each export, so a policy reload's new gate is what counts."""

    async def dedup_gauges() -> dict[str, float]:
        # current_entries is None when the store did not answer: left out, not a 0.
        dedup = await current_gate().dedup.stats()
        return {k: v for k, v in asdict(dedup).items() if v is not None}

    stats.add_gauges("edge", lambda: current_gate().stats())
    stats.add_gauges("edge.dedup", dedup_gauges)


async def reload_policy(ingest: Ingest, path) -> bool:
    """SIGHUP: re-read the policy file; a bad file keeps the running policy (logged).

    Calls in flight finish on the parts they started with; parts the new policy
    does not change (and their state: dedup entries, buckets) are kept.
    """
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        log.error("policy reload rejected; keeping the running policy", extra={"error": str(exc)})
        return False
    ingest.gate, replaced = ingest.gate.reloaded(policy)
    for part in replaced:  # close after the calls that still hold it are done
        asyncio.get_running_loop().call_later(
            RETIRE_AFTER_S, lambda p=part: asyncio.ensure_future(_close(p)))
    log.info("policy reloaded", extra={"file": str(path) if path else "(defaults)",
                                       "replaced": len(replaced)})
    return True


async def _close(part) -> None:
    await (part.close() if hasattr(part, "close") else part.aclose())
