"""Ingest core: the edge. Validates, resolves the tenant, keys the message, forwards.

    ingest = Ingest(routing_client, settings)
    reply = await ingest.submit(message, request.HasField("message"), headers)

Dedup, rate limiting and priority admission slot in between validation and
forwarding in later work; the idempotency key they need is derived here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

from clawmesh.common.v1 import common_pb2
from clawmesh.services.ingest.validation import validate_inbound
from clawmesh.shared import metadata as md
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

    def __init__(self, routing, settings: MeshSettings) -> None:
        self.routing = routing
        self.settings = settings
        self.limits = settings.ingest

    def admit(self, message: common_pb2.InboundMessage, present: bool,
              headers: dict[str, str]) -> tuple[common_pb2.InboundMessage, dict[str, str]]:
        """Validate and normalise; returns the message to forward and its metadata."""
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
        forward.idempotency_key = idempotency_key(forward, request_id)
        out = {
            md.TENANT: tenant,
            md.REQUEST_ID: request_id,
            md.IDEMPOTENCY_KEY: forward.idempotency_key,
            md.PRIORITY: PRIORITY_NAMES[forward.priority],
        }
        return forward, out

    async def dispatch(self, forward: common_pb2.InboundMessage,
                       out: dict[str, str]) -> common_pb2.Reply:
        """Have routing answer a message that ``admit`` returned."""
        response = await self.routing.dispatch(forward, out)
        return response.reply

    async def submit(self, message, present: bool, headers: dict[str, str]) -> common_pb2.Reply:
        forward, out = self.admit(message, present, headers)
        return await self.dispatch(forward, out)

    async def stream(self, forward: common_pb2.InboundMessage,
                     out: dict[str, str]) -> AsyncIterator[common_pb2.ReplyChunk]:
        """Stream the reply to a message that ``admit`` returned."""
        stream = self.routing.dispatch_stream(forward, out)
        try:
            async for response in stream:
                yield response.chunk
        finally:
            await stream.aclose()
