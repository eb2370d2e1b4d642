"""Build the ingest service: the edge, over a typed routing client.

With ``stats`` (an RpcStats, as the launcher passes when telemetry is on) the edge
gate's figures go out with every OTLP push as gauges: ``clawmesh.edge.*`` from
``gate.stats()`` (admission, rate limits, shadow counts) and ``clawmesh.edge.dedup.*``
from ``await gate.dedup.stats()``, read at export time (an async source: its entry
count may ask Redis, so it is never read on a request's path; see DedupGauges), and with
API keys ``clawmesh.edge.auth_refused.*`` (calls refused: missing, malformed, unknown, expired).
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
from clawmesh.shared.security import active
from clawmesh.shared.settings import MeshSettings

log = logging.getLogger(__name__)

RETIRE_AFTER_S = 60.0  # replaced parts of the gate are closed this long after a reload


async def build(settings: MeshSettings, stats=None) -> MeshServer:
    pool = ChannelPool(settings, settings.ingest.max_message_bytes)
    if stats is not None and pool.breakers is not None:
        stats.add_gauges("breaker", pool.breaker_gauges)
    gate = EdgeGate.from_policy(load_policy(settings.ingest.policy_file))
    ingest = Ingest(pool.client(RoutingClient, settings.routing.target()), settings, gate)
    if stats is not None:
        register_edge_gauges(stats, lambda: ingest.gate)  # the gate in use at each export
    servicer = IngestServicer(ingest, settings.ingest.converse_max_in_flight)
    server = create_server(
        settings.ingest,
        [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer)],
        by_name("ingest").grpc_services,
        server_chain(stats, settings.deadline_reserve_ms),
    )
    server.on_stop(pool.close)
    server.on_stop(lambda: ingest.gate.close())  # the gate in use at stop time
    server.on_reload(lambda: reload_policy(ingest, settings.ingest.policy_file))
    keys = active().keys()  # API keys (security.auth: api_key): SIGHUP re-reads the keys file too
    if keys is not None:
        server.on_reload(lambda: asyncio.to_thread(keys.reload))
        if stats is not None:
            stats.add_gauges("edge.auth_refused", lambda: dict(keys.refused))
    return server


def register_edge_gauges(stats, current_gate: Callable[[], EdgeGate]) -> None:
    """Export the gate's stats through ``stats`` (an RpcStats) as ``clawmesh.edge.*`` gauges;
    ``current_gate()`` is read at each export, so a policy reload's new gate is what counts."""
    stats.add_gauges("edge", lambda: current_gate().stats())
    stats.add_gauges("edge.dedup", DedupGauges(current_gate))


class DedupGauges:
    """``await dedup.stats()`` as an async gauge source that never loses the counters.

    The entry count may SCAN Redis (O(keys), bounded by the Deduplicator to about
    1 s): one read runs at a time, and an export that it outlasts by ``wait_s``
    gets the previous values while the read finishes for the next one.
    ``current_entries`` is left out when the store did not answer (not sent as 0).
    """

    def __init__(self, current_gate: Callable[[], EdgeGate], wait_s: float = 0.5) -> None:
        self._current_gate = current_gate
        self.wait_s = wait_s
        self.last: dict[str, float] = {}
        self._read: asyncio.Future | None = None

    async def __call__(self) -> dict[str, float]:
        read = self._read
        if read is not None and read.done():  # it outlasted the previous export
            self._take(read)
            read = None
        if read is None:
            read = self._read = asyncio.ensure_future(self._current_gate().dedup.stats())
        try:
            await asyncio.wait_for(asyncio.shield(read), self.wait_s)
        except TimeoutError:
            return self.last
        finally:
            if read.done():
                self._read = None
        self._take(read)
        return self.last

    def _take(self, read: asyncio.Future) -> None:
        if not read.cancelled() and read.exception() is None:
            self.last = {k: v for k, v in asdict(read.result()).items() if v is not None}


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
