"""The routing brain: choose a route, load history, call the provider, store the turn.

    router = Router(memory_stub, provider_stub, settings)
    reply, route = await router.dispatch(inbound_message)

Every outbound call carries the inbound call's remaining deadline and
metadata (shared.context.call_options).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2
from clawmesh.provider.v1 import provider_pb2
from clawmesh.shared.context import call_options, current
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


def now_ts() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class Router:
    """Orchestrates one message. Stubs are injected; nothing here knows ports."""

    def __init__(self, memory, provider, settings: MeshSettings) -> None:
        self.memory = memory
        self.provider = provider
        self.settings = settings
        self._default = Route(
            name="default",
            backend=settings.routing.default_backend,
            model=settings.routing.default_model,
            history_limit=settings.routing.history_limit,
            reason="no routing rules configured; default backend",
        )

    def decide(self, message: common_pb2.InboundMessage) -> Route:
        return self._default

    def _opts(self) -> dict:
        return call_options(self.settings.call_timeout_s, self.settings.deadline_reserve_ms)

    async def _prompt(self, message, route: Route):
        user = common_pb2.ChatMessage(
            role=common_pb2.ROLE_USER, content=message.content, name=message.sender,
            created_time=message.sent_time if message.HasField("sent_time") else now_ts(),
        )
        history = []
        if route.history_limit:
            got = await self.memory.GetHistory(
                memory_pb2.GetHistoryRequest(
                    session_id=message.session_id, limit=route.history_limit
                ),
                **self._opts(),
            )
            history = list(got.messages)
        return user, [*history, user]

    async def _store(self, message, user, assistant) -> None:
        info = current()
        key = message.idempotency_key or (info.request_id if info else "") or uuid.uuid4().hex
        await self.memory.BatchAppend(
            memory_pb2.BatchAppendRequest(
                session_id=message.session_id, messages=[user, assistant], idempotency_key=key
            ),
            **self._opts(),
        )

    def _reply(self, message, content, backend, model, usage, finish) -> common_pb2.Reply:
        info = current()
        return common_pb2.Reply(
            reply_id=uuid.uuid4().hex, session_id=message.session_id, content=content,
            backend=backend, model=model, usage=usage, finish_reason=finish,
            created_time=now_ts(), request_id=info.request_id if info else "",
        )

    async def dispatch(self, message: common_pb2.InboundMessage):
        route = self.decide(message)
        user, prompt = await self._prompt(message, route)
        gen = await self.provider.Generate(
            provider_pb2.GenerateRequest(
                backend=route.backend, model=route.model, messages=prompt,
                session_id=message.session_id,
            ),
            **self._opts(),
        )
        assistant = gen.message
        assistant.created_time.GetCurrentTime()
        await self._store(message, user, assistant)
        reply = self._reply(
            message, assistant.content, gen.backend, gen.model, gen.usage, gen.finish_reason
        )
        return reply, route

    async def dispatch_stream(
        self, message: common_pb2.InboundMessage
    ) -> AsyncIterator[tuple[common_pb2.ReplyChunk, Route | None]]:
        """Yields (chunk, route-on-the-first-chunk-only); the last chunk is final."""
        route = self.decide(message)
        user, prompt = await self._prompt(message, route)
        call = self.provider.GenerateStream(
            provider_pb2.GenerateStreamRequest(
                backend=route.backend, model=route.model, messages=prompt,
                session_id=message.session_id,
            ),
            **self._opts(),
        )
        parts: list[str] = []
        first: Route | None = route
        try:
            async for piece in call:
                if piece.final:
                    content = "".join(parts)
                    assistant = common_pb2.ChatMessage(
                        role=common_pb2.ROLE_ASSISTANT, content=content,
                        token_count=piece.usage.completion_tokens, created_time=now_ts(),
                    )
                    await self._store(message, user, assistant)
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
            call.cancel()
