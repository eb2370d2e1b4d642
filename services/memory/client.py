"""Typed client of the memory service, for the other services' cores.

    memory = pool.client(MemoryClient, settings.memory.target())
    got = await memory.history("s1", limit=20)
    found = await memory.search("s1", "favourite tea", limit=5)
"""

from __future__ import annotations

from collections.abc import Sequence

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2
from clawmesh.shared.rpc.client import ServiceClient


class MemoryClient(ServiceClient):
    """``clawmesh.memory.v1.MemoryService`` as domain calls."""

    SERVICE = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"]

    async def history(self, session_id: str, limit: int = 0, after_sequence: int = 0,
                      token_budget: int = 0) -> memory_pb2.GetHistoryResponse:
        """The newest messages of a session (only those after ``after_sequence`` when set)."""
        return await self.unary("GetHistory", memory_pb2.GetHistoryRequest(
            session_id=session_id, limit=limit, after_sequence=after_sequence,
            token_budget=token_budget))

    async def append(self, session_id: str, messages: Sequence[common_pb2.ChatMessage],
                     idempotency_key: str) -> memory_pb2.BatchAppendResponse:
        """Append ``messages`` atomically, once per ``idempotency_key``."""
        return await self.unary("BatchAppend", memory_pb2.BatchAppendRequest(
            session_id=session_id, messages=messages, idempotency_key=idempotency_key))

    async def search(self, session_id: str, query: str, limit: int = 0) -> memory_pb2.SearchResponse:
        """The session's messages holding every word of ``query``, newest first (``hits``
        with their sequences); ``limit`` 0: the service's default. For an agent's memory tool."""
        return await self.unary("Search", memory_pb2.SearchRequest(
            session_id=session_id, query=query, limit=limit))
