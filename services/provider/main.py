"""Build the provider service.

    server = await build(settings)                      # backends, breakers and retries from settings
    server = await build(settings, provider=Provider.from_settings(settings.provider, clock=clock))
    await server.start()

``build`` opens the response cache's Redis connection (``ResponseCache.connect``).
"""

from __future__ import annotations

from clawmesh.provider.v1 import provider_pb2_grpc
from clawmesh.services.provider.core import Provider
from clawmesh.services.provider.servicer import ProviderServicer
from clawmesh.services.registry import by_name
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, stats=None, provider: Provider | None = None) -> MeshServer:
    """The server of ``provider`` (default: built from ``settings.provider``), not started."""
    cfg = settings.provider
    provider = provider or Provider.from_settings(cfg)
    server = create_server(
        cfg,
        [(provider_pb2_grpc.add_ProviderServiceServicer_to_server, ProviderServicer(provider))],
        by_name("provider").grpc_services,
        server_chain(stats, settings.deadline_reserve_ms),
    )
    server.on_stop(provider.aclose)
    if provider.cache is not None:
        await provider.cache.connect()  # Redis's handshake now, not within the first call's op timeout
    return server
