"""Build the provider service."""

from __future__ import annotations

from clawmesh.provider.v1 import provider_pb2_grpc
from services.provider.backends import MockBackend
from services.provider.core import Provider
from services.provider.servicer import ProviderServicer
from shared.interceptors import server_interceptors
from shared.server import MeshServer, create_server
from shared.settings import MeshSettings


async def build(settings: MeshSettings, meter=None) -> MeshServer:
    cfg = settings.provider
    mock = MockBackend(
        name="mock", model=cfg.mock_model, latency_s=cfg.mock_latency_ms / 1000.0,
        chunk_words=cfg.mock_chunk_words,
    )
    provider = Provider({"mock": mock}, default=cfg.default_backend)
    return create_server(
        cfg,
        [(provider_pb2_grpc.add_ProviderServiceServicer_to_server, ProviderServicer(provider))],
        ["clawmesh.provider.v1.ProviderService"],
        server_interceptors(meter),
    )
