"""Build the provider service."""

from __future__ import annotations

from clawmesh.provider.v1 import provider_pb2_grpc
from clawmesh.services.provider.backends import build_backends
from clawmesh.services.provider.core import Provider
from clawmesh.services.provider.servicer import ProviderServicer
from clawmesh.services.registry import by_name
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, stats=None) -> MeshServer:
    cfg = settings.provider
    provider = Provider(build_backends(cfg), default=cfg.default_backend)
    server = create_server(
        cfg,
        [(provider_pb2_grpc.add_ProviderServiceServicer_to_server, ProviderServicer(provider))],
        by_name("provider").grpc_services,
        server_chain(stats),
    )
    server.on_stop(provider.aclose)
    return server
