"""Build the routing service: the router over typed memory and provider clients.

    server = await build(settings)            # rules from routing.rules_file; SIGHUP re-reads them
    server = await build(settings, clock=fake_clock)   # tests: health and affinity on a fake clock
    server.router                             # the core (its health, pins, rules)

A rules file that does not validate stops the build (RulesError naming the file and key);
``clawmesh config check`` finds the same errors before a deploy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clawmesh.routing.v1 import routing_pb2_grpc
from clawmesh.services.memory.client import MemoryClient
from clawmesh.services.provider.client import ProviderClient
from clawmesh.services.registry import by_name
from clawmesh.services.routing.core import Router
from clawmesh.services.routing.servicer import RoutingServicer
from clawmesh.shared.rpc.channels import ChannelPool
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, stats=None, *, clock: Callable[[], float] = time.monotonic,
                wall: Callable[[], float] = time.time) -> MeshServer:
    pool = ChannelPool(settings, settings.routing.max_message_bytes)
    if stats is not None and pool.breakers is not None:
        stats.add_gauges("breaker", pool.breaker_gauges)
    router = Router(
        pool.client(MemoryClient, settings.memory.target()),
        pool.client(ProviderClient, settings.provider.target()),
        settings, clock=clock, wall=wall,
    )
    server = create_server(
        settings.routing,
        [(routing_pb2_grpc.add_RoutingServiceServicer_to_server, RoutingServicer(router))],
        by_name("routing").grpc_services,
        server_chain(stats, settings.deadline_reserve_ms),
    )
    server.on_stop(pool.close)
    server.on_reload(router.reload)
    server.router = router  # tests reach the core through the server they built
    return server
