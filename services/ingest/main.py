"""Build the ingest service."""

from __future__ import annotations

from clawmesh.ingest.v1 import ingest_pb2_grpc
from clawmesh.routing.v1 import routing_pb2_grpc
from services.ingest.core import Ingest
from services.ingest.servicer import IngestServicer
from shared.channels import ChannelPool
from shared.interceptors import server_interceptors
from shared.server import MeshServer, create_server
from shared.settings import MeshSettings


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
