"""Ingest core: the edge. Validates, resolves the tenant, keys the message, gates, forwards.

    ingest = Ingest(routing_client, settings, gate)
    outcome = await ingest.submit(message, request.HasField("message"), headers)

After validation every message goes through the edge gate (services/ingest/edge.py:
rate limits, dedup with replay, priority admission), whatever the RPC shape.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

from opentelemetry import trace

from clawmesh.common.v1 import common_pb2
from clawmesh.services.ingest.edge import EdgeGate, Outcome
from clawmesh.services.ingest.validation import validate_inbound
from clawmesh.shared import metadata as md
from clawmesh.shared import tracing
from clawmesh.shared.errors import PermissionDenied
from clawmesh.shared.settings import MeshSettings

PRIORITY_NAMES = {v: k.removeprefix("PRIORITY_").lower() for k, v in common_pb2.Priority.items()}


def idempotency_key(message: common_pb2.InboundMessage, request_id: str) -> str:
    """The key a message is stored (and later deduplicated) under.

    Scoped to tenant + channel + session, from the platform's message id or
    the caller's own key. A message with neither is unique (keyed by its
    request id): content alone never makes two messages the same — a user may
    say "yes" twice.
    """
    if message.idempotency_key:
        kind, value = "key", message.idempotency_key
    elif message.channel_message_id:
        kind, value = "id", message.channel_message_id
    else:
        kind, value = "request", request_id
    basis = "\x1f".join((message.tenant, message.channel, message.session_id, kind, value))
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:32]


class Ingest:
    """Admits inbound messages and has routing answer them."""

    def __init__(self, routing, settings: MeshSettings, gate: EdgeGate | None = None) -> None:
        self.routing = routing
        self.settings = settings
        self.limits = settings.ingest
        self.gate = gate

    def admit(self, message: common_pb2.InboundMessage, present: bool,
              headers: dict[str, str]) -> tuple[common_pb2.InboundMessage, dict[str, str], bool]:
        """Validate and normalise: the message to forward, its metadata, and whether copies
        of it are recognisable (it has a channel message id or a caller's key)."""
        validate_inbound(message, present, self.limits)
        tenant = headers.get(md.TENANT) or self.limits.default_tenant
        if message.tenant and message.tenant != tenant:
            raise PermissionDenied(
                f"message.tenant {message.tenant!r} does not match the caller's tenant"
            )
        forward = common_pb2.InboundMessage()
        forward.CopyFrom(message)
        forward.tenant = tenant
        if forward.priority == common_pb2.PRIORITY_UNSPECIFIED:
            forward.priority = common_pb2.PRIORITY_NORMAL
        request_id = headers.get(md.REQUEST_ID) or uuid.uuid4().hex
        # The caller's key: the body field wins over the x-clawmesh-idempotency-key header.
        if not forward.idempotency_key:
            forward.idempotency_key = headers.get(md.IDEMPOTENCY_KEY, "")[: self.limits.max_id_chars]
        dedupable = bool(forward.idempotency_key or forward.channel_message_id)
        forward.idempotency_key = idempotency_key(forward, request_id)
        out = {
            md.TENANT: tenant,
            md.REQUEST_ID: request_id,
            md.IDEMPOTENCY_KEY: forward.idempotency_key,
            md.PRIORITY: PRIORITY_NAMES[forward.priority],
        }
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({tracing.REQUEST_ID: request_id, tracing.TENANT: tenant})
        return forward, out, dedupable

    async def dispatch(self, forward: common_pb2.InboundMessage, out: dict[str, str],
                       dedupable: bool, method: str = "Submit") -> Outcome:
        """The reply to a message that ``admit`` returned (replayed? quota left?)."""

        async def produce() -> common_pb2.Reply:
            return (await self.routing.dispatch(forward, out)).reply

        if self.gate is None:
            return Outcome(await produce())
        return await self.gate.unary(forward, method, dedupable, produce)

    async def submit(self, message, present: bool, headers: dict[str, str],
                     method: str = "Submit") -> Outcome:
        forward, out, dedupable = self.admit(message, present, headers)
        return await self.dispatch(forward, out, dedupable, method)

    async def stream(self, forward: common_pb2.InboundMessage, out: dict[str, str],
                     dedupable: bool) -> AsyncIterator[tuple[common_pb2.ReplyChunk, bool]]:
        """Stream the reply to a message that ``admit`` returned: (chunk, replayed)."""

        async def produce() -> AsyncIterator[common_pb2.ReplyChunk]:
            stream = self.routing.dispatch_stream(forward, out)
            try:
                async for response in stream:
                    yield response.chunk
            finally:
                await stream.aclose()

        if self.gate is None:
            async for chunk in produce():
                yield chunk, False
            return
        async for item in self.gate.stream(forward, "SubmitStream", dedupable, produce):
            yield item
