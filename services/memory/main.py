"""Build the memory service: the SQLite store, its servicer and a mesh server.

server = await build(MeshSettings(memory={"port": 0, "data_dir": tmp_path}))
await server.start()
"""

from __future__ import annotations

from clawmesh.memory.v1 import memory_pb2_grpc
from clawmesh.services.memory.servicer import MemoryServiceServicer
from clawmesh.services.memory.store import MemoryStore
from clawmesh.shared.rpc.chain import server_interceptors
from clawmesh.shared.rpc.server import MeshServer, create_server
from clawmesh.shared.settings import MeshSettings

SERVICE_NAME = "clawmesh.memory.v1.MemoryService"


async def build(settings: MeshSettings, meter=None) -> MeshServer:
    """Open the store and build (not start) the server; stopping the server closes the store."""
    config = settings.memory
    store = await MemoryStore.open(config.data_dir, config.max_messages_per_session)
    try:
        server = create_server(
            config,
            [(memory_pb2_grpc.add_MemoryServiceServicer_to_server, MemoryServiceServicer(store))],
            [SERVICE_NAME],
            server_interceptors(meter),
        )
    except BaseException:
        await store.close()
        raise
    server.on_stop(store.close)
    return server
