"""Build the routing service."""

from __future__ import annotations

from clawmesh.memory.v1 import memory_pb2_grpc
from clawmesh.provider.v1 import provider_pb2_grpc
from clawmesh.routing.v1 import routing_pb2_grpc
from services.routing.core import Router
from services.routing.servicer import RoutingServicer
from shared.channels import ChannelPool
from shared.interceptors import server_interceptors
from shared.server import MeshServer, create_server
from shared.settings import MeshSettings


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
