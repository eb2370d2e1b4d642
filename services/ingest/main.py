"""Build the ingest service: the edge, over a typed routing client."""

from __future__ import annotations

from clawmesh.ingest.v1 import ingest_pb2_grpc
from clawmesh.services.ingest.core import Ingest
from clawmesh.services.ingest.edge import EdgeGate
from clawmesh.services.ingest.servicer import IngestServicer
from clawmesh.services.registry import by_name
from clawmesh.services.routing.client import RoutingClient
from clawmesh.shared.policy import load_policy
from clawmesh.shared.rpc.channels import ChannelPool
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, stats=None) -> MeshServer:
    pool = ChannelPool(settings, settings.ingest.max_message_bytes)
    gate = EdgeGate.from_policy(load_policy(settings.ingest.policy_file))
    ingest = Ingest(pool.client(RoutingClient, settings.routing.target()), settings, gate)
    servicer = IngestServicer(ingest, settings.ingest.converse_max_in_flight)
    server = create_server(
        settings.ingest,
        [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer)],
        by_name("ingest").grpc_services,
        server_chain(stats),
    )
    server.on_stop(pool.close)
    server.on_stop(gate.close)
    return server
