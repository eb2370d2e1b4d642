"""A routing service in front of real memory and provider servers whose backends are HTTP stand-ins.

    async with routing_mesh(settings, tmp_path, RULES, {"a": openai(api_a), "b": openai(api_b)}) as mesh:
        reply = await mesh.routing.Dispatch(routing_pb2.DispatchRequest(message=inbound("hi")), timeout=5)
        mesh.router                      # the core, for its health and pins
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from clawmesh.services.routing import main as routing_main
from clawmesh.services.routing.core import Router
from clawmesh.shared.settings import MeshSettings, OpenAIBackendConfig, ProviderSettings
from tests.inproc import inproc_mesh
from tests.openai_standin import OpenAIStandin

TENANT = (("x-clawmesh-tenant", "acme"),)


def inbound(text: str, session: str = "s1", key: str = "", **fields) -> common_pb2.InboundMessage:
    return common_pb2.InboundMessage(tenant="acme", channel="test", sender="u1", session_id=session,
                                     content=text, idempotency_key=key, **fields)


def openai(api: OpenAIStandin, model: str = "", **overrides) -> OpenAIBackendConfig:
    """A backend on ``api``: one attempt per call (failover is routing's), short stream timeouts."""
    fields = {"base_url": api.url, "model": model or f"model-{api.port}", "retry": {"max_attempts": 1},
              "stall_timeout_s": 0.3, **overrides}
    return OpenAIBackendConfig(**fields)


@dataclass
class Mesh:
    routing: routing_pb2_grpc.RoutingServiceStub
    memory: memory_pb2_grpc.MemoryServiceStub
    router: Router
    server: object  # routing's MeshServer

    async def dispatch(self, text: str, session: str = "s1", **kwargs) -> routing_pb2.DispatchResponse:
        request = routing_pb2.DispatchRequest(message=inbound(text, session, **kwargs))
        return await self.routing.Dispatch(request, metadata=TENANT, timeout=10)

    async def stream(self, text: str, session: str = "s1") -> list[routing_pb2.DispatchStreamResponse]:
        request = routing_pb2.DispatchStreamRequest(message=inbound(text, session))
        return [r async for r in self.routing.DispatchStream(request, metadata=TENANT, timeout=10)]

    async def explain(self, text: str, session: str = "s1") -> routing_pb2.RouteDecision:
        reply = await self.routing.Explain(routing_pb2.ExplainRequest(message=inbound(text, session)),
                                           metadata=TENANT, timeout=5)
        return reply.route

    async def history(self, session: str = "s1") -> list[common_pb2.ChatMessage]:
        got = await self.memory.GetHistory(memory_pb2.GetHistoryRequest(session_id=session),
                                           metadata=TENANT, timeout=5)
        return list(got.messages)


@asynccontextmanager
async def routing_mesh(settings: MeshSettings, tmp_path, rules: str | None, backends: dict,
                       clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
    """Memory and provider (``backends``, the first the default) in process, and routing with
    ``rules`` (YAML text; None: no rules file) on ``clock``."""
    settings.provider = ProviderSettings(port=0, default_backend=next(iter(backends)), backends=backends,
                                         cache={"enabled": False})
    if rules is not None:
        path = tmp_path / "rules.yaml"
        path.write_text(rules)
        settings.routing.rules_file = path
    async with inproc_mesh(settings, services=("memory", "provider")) as servers:
        server = await routing_main.build(settings, clock=clock, wall=wall)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as r, \
                    grpc.aio.insecure_channel(servers["memory"].address) as m:
                yield Mesh(routing_pb2_grpc.RoutingServiceStub(r), memory_pb2_grpc.MemoryServiceStub(m),
                           server.router, server)
        finally:
            await server.stop(0)


@pytest.fixture
async def api_a():
    async with OpenAIStandin() as server:
        yield server


@pytest.fixture
async def api_b():
    async with OpenAIStandin() as server:
        yield server


@pytest.fixture
async def api_c():
    async with OpenAIStandin() as server:
        yield server
