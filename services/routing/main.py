"""Build the routing service."""

from __future__ import annotations

from clawmesh.memory.v1 import memory_pb2_grpc
from clawmesh.provider.v1 import provider_pb2_grpc
from clawmesh.routing.v1 import routing_pb2_grpc
from clawmesh.services.routing.core import Router
from clawmesh.services.routing.servicer import RoutingServicer
from clawmesh.shared.rpc.chain import server_interceptors
from clawmesh.shared.rpc.channels import ChannelPool
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, meter=None) -> MeshServer:
    pool = ChannelPool(settings.routing.max_message_bytes)
    router = Router(
        memory_pb2_grpc.MemoryServiceStub(pool.get(settings.memory.target())),
        provider_pb2_grpc.ProviderServiceStub(pool.get(settings.provider.target())),
        settings,
    )
    server = create_server(
        settings.routing,
        [(routing_pb2_grpc.add_RoutingServiceServicer_to_server, RoutingServicer(router))],
        ["clawmesh.routing.v1.RoutingService"],
        server_interceptors(meter),
    )
    server.on_stop(pool.close)
    return server
