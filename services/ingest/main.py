"""Build the ingest service."""

from __future__ import annotations

from clawmesh.ingest.v1 import ingest_pb2_grpc
from clawmesh.routing.v1 import routing_pb2_grpc
from clawmesh.services.ingest.core import Ingest
from clawmesh.services.ingest.servicer import IngestServicer
from clawmesh.shared.rpc.chain import server_interceptors
from clawmesh.shared.rpc.channels import ChannelPool
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, meter=None) -> MeshServer:
    pool = ChannelPool(settings.ingest.max_message_bytes)
    ingest = Ingest(routing_pb2_grpc.RoutingServiceStub(pool.get(settings.routing.target())), settings)
    servicer = IngestServicer(ingest, settings.ingest.converse_max_in_flight)
    server = create_server(
        settings.ingest,
        [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer)],
        ["clawmesh.ingest.v1.IngestService"],
        server_interceptors(meter),
    )
    server.on_stop(pool.close)
    return server
