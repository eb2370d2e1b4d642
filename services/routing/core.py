"""The routing brain: choose a route, load history, call the provider, store the turn.

    router = Router(memory_client, provider_client, settings)
    reply, route = await router.dispatch(inbound_message)

Cores speak domain calls on typed clients (services/<svc>/client.py); the
client chain adds the inbound call's deadline and metadata to every call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from opentelemetry import trace

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2
from clawmesh.services.routing.history import HistoryCache
from clawmesh.shared import tracing
from clawmesh.shared.context import current
from clawmesh.shared.settings import MeshSettings


@dataclass(frozen=True)
class Route:
    """Where a message goes."""

    name: str
    backend: str
    model: str
    history_limit: int
    reason: str
    fallback_backends: list[str] = field(default_factory=list)


def _noted(route: Route) -> Route:
    """``route``, recorded on the current (routing's server) span when it is sampled."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({tracing.ROUTE: route.name, tracing.ROUTE_BACKEND: route.backend,
                             tracing.ROUTE_MODEL: route.model})
    return route


def now_ts() -> timestamp_pb2.Timestamp:
    # FromNanoseconds, not GetCurrentTime(): that one goes through datetime (~10x slower).
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


class Router:
    """Orchestrates one message. Clients are injected; nothing here knows ports."""

    def __init__(self, memory, provider, settings: MeshSettings,
                 history: HistoryCache | None = None) -> None:
        self.memory = memory
        self.provider = provider
        self.settings = settings
        cfg = settings.routing
        if history is None and cfg.history_cache_sessions:
            history = HistoryCache(cfg.history_cache_sessions, cfg.history_cache_ttl_s)
        self.history = history
        self._default = Route(
            name="default",
            backend=cfg.default_backend,
            model=cfg.default_model,
            history_limit=cfg.history_limit,
            reason="no routing rules configured; default backend",
        )

    def decide(self, message: common_pb2.InboundMessage) -> Route:
        return self._default

    async def _prompt(self, message, route: Route):
        user = common_pb2.ChatMessage(
            role=common_pb2.ROLE_USER, content=message.content, name=message.sender,
            created_time=message.sent_time if message.HasField("sent_time") else now_ts(),
        )
        history: list = []
        if route.history_limit:
            if self.history is not None:
                history = await self.history.load(
                    self.memory, message.tenant, message.session_id, route.history_limit)
            else:
                got = await self.memory.history(message.session_id, limit=route.history_limit)
                history = list(got.messages)
        return user, [*history, user]

    async def _store(self, message, route: Route, user, assistant) -> None:
        # Ingest always keys the message; a direct caller of routing gets a fresh key.
        key = message.idempotency_key or uuid.uuid4().hex
        turn = [user, assistant]
        response = await self.memory.append(message.session_id, turn, key)
        if self.history is not None:
            self.history.appended(message.tenant, message.session_id, turn, response,
                                  route.history_limit)

    def _reply(self, message, content, backend, model, usage, finish) -> common_pb2.Reply:
        info = current()
        return common_pb2.Reply(
            reply_id=uuid.uuid4().hex, session_id=message.session_id, content=content,
            backend=backend, model=model, usage=usage, finish_reason=finish,
            created_time=now_ts(), request_id=info.request_id if info else "",
        )

    async def dispatch(self, message: common_pb2.InboundMessage):
        route = _noted(self.decide(message))
        user, prompt = await self._prompt(message, route)
        gen = await self.provider.generate(provider_pb2.GenerateRequest(
            backend=route.backend, model=route.model, messages=prompt,
            session_id=message.session_id,
        ))
        assistant = gen.message
        assistant.created_time.FromNanoseconds(time.time_ns())
        await self._store(message, route, user, assistant)
        reply = self._reply(
            message, assistant.content, gen.backend, gen.model, gen.usage, gen.finish_reason
        )
        return reply, route

    async def dispatch_stream(
        self, message: common_pb2.InboundMessage
    ) -> AsyncIterator[tuple[common_pb2.ReplyChunk, Route | None]]:
        """Yields (chunk, route-on-the-first-chunk-only); the last chunk is final."""
        route = _noted(self.decide(message))
        user, prompt = await self._prompt(message, route)
        stream = self.provider.generate_stream(provider_pb2.GenerateStreamRequest(
            backend=route.backend, model=route.model, messages=prompt,
            session_id=message.session_id,
        ))
        parts: list[str] = []
        first: Route | None = route
        try:
            async for piece in stream:
                if piece.final:
                    content = "".join(parts)
                    assistant = common_pb2.ChatMessage(
                        role=common_pb2.ROLE_ASSISTANT, content=content,
                        token_count=piece.usage.completion_tokens, created_time=now_ts(),
                    )
                    await self._store(message, route, user, assistant)
                    reply = self._reply(
                        message, content, piece.backend, piece.model, piece.usage,
                        piece.finish_reason,
                    )
                    yield common_pb2.ReplyChunk(index=piece.index, final=True, reply=reply), first
                    return
                parts.append(piece.delta)
                yield common_pb2.ReplyChunk(index=piece.index, delta=piece.delta), first
                first = None
        finally:
            await stream.aclose()
