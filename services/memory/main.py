"""Build the memory service: its store (SQLite or Redis), the servicer and a mesh server.

    server = await build(MeshSettings(memory={"port": 0, "data_dir": tmp_path}))
    await server.start()

With ``stats`` (an RpcStats, as the launcher passes when telemetry is on) the
store's totals go out with every OTLP push as gauges ``clawmesh.memory.*``:
sessions, trimmed_messages, expired_sessions, expired_messages (all tenants;
read at export time, never on a request's path).
"""

from __future__ import annotations

from clawmesh.memory.v1 import memory_pb2_grpc
from clawmesh.services.memory.servicer import MemoryServiceServicer
from clawmesh.services.memory.store import open_store
from clawmesh.services.registry import by_name
from clawmesh.shared.rpc.interceptors import server_chain
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings


async def build(settings: MeshSettings, stats=None) -> MeshServer:
    """Open the store and build (not start) the server; stopping the server closes the store."""
    config = settings.memory
    store = await open_store(config)
    # The tenant is decided at the edge; called directly, memory falls back to ingest's default.
    servicer = MemoryServiceServicer(store, config, settings.ingest.default_tenant)
    try:
        server = create_server(
            config,
            [(memory_pb2_grpc.add_MemoryServiceServicer_to_server, servicer)],
            by_name("memory").grpc_services,
            server_chain(stats, settings.deadline_reserve_ms),
        )
    except BaseException:
        await store.close()
        raise
    if stats is not None:
        stats.add_gauges("memory", store.gauges)
    server.on_stop(store.close)
    return server
