"""The in-process bound: the five services' handlers called directly in one process.

    async with direct_mesh(settings) as mesh:
        reply = await mesh.submit(inbound_message)

No sockets and no serialization: each typed client calls the other service's
handler — wrapped in the same server chain — as a coroutine. This is what the
mesh's own work costs in Python; ``make bench`` compares the real mesh (five
processes, gRPC between them) against it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.ingest.core import Ingest
from clawmesh.services.memory.client import MemoryClient
from clawmesh.services.provider.client import ProviderClient
from clawmesh.services.registry import by_name
from clawmesh.services.routing.core import Router
from clawmesh.shared.rpc.client import Call
from clawmesh.shared.rpc.exchange_server import ExchangeAbort, ExchangeContext
from clawmesh.shared.rpc.interceptors import client_chain
from clawmesh.shared.settings import MeshSettings


class DirectTransport:
    """Runs a call on a handler of this process, as the server would (chain included)."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers

    def _context(self, call: Call) -> ExchangeContext:
        deadline = None if call.timeout is None else time.monotonic() + call.timeout
        return ExchangeContext(dict(call.metadata), deadline, "in-process")

    @staticmethod
    def _raise(ctx: ExchangeContext):
        raise grpc.aio.AioRpcError(ctx.code() or grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(*ctx.trailing_metadata()), ctx.details())

    async def unary(self, call: Call):
        ctx = self._context(call)
        try:
            return await self.handlers[call.method].unary_unary(call.request, ctx)
        except ExchangeAbort:
            self._raise(ctx)

    async def stream(self, call: Call) -> AsyncIterator:
        ctx = self._context(call)
        try:
            async for response in self.handlers[call.method].unary_stream(call.request, ctx):
                yield response
        except ExchangeAbort:
            self._raise(ctx)

    async def close(self) -> None:
        pass


class DirectMesh:
    """Ingest's core in front of routing, memory and provider, all in this process."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def submit(self, message: common_pb2.InboundMessage,
                     headers: dict[str, str] | None = None) -> common_pb2.Reply:
        return (await self.ingest.submit(message, True, headers or {})).reply


@asynccontextmanager
async def direct_mesh(settings: MeshSettings):
    """Build memory and provider (not started: no traffic reaches their ports) and wire them."""
    servers = [await by_name(n).build(settings) for n in ("memory", "provider")]
    handlers = {k: v for s in servers for k, v in s.handlers.items()}
    transport = DirectTransport(handlers)
    chain = client_chain(settings.call_timeout_s, settings.deadline_reserve_ms)
    router = Router(MemoryClient(transport, chain), ProviderClient(transport, chain), settings)

    class RouterClient:
        """Routing's core behind the RoutingClient interface ingest uses."""

        async def dispatch(self, message, headers):
            reply, _ = await router.dispatch(message)
            return routing_pb2.DispatchResponse(reply=reply)

    try:
        yield DirectMesh(Ingest(RouterClient(), settings))
    finally:
        for server in servers:
            await server.stop(0)
