"""Ingest core: the edge. Validates, resolves the tenant, keys the message, forwards.

    ingest = Ingest(routing_stub, settings)
    reply = await ingest.submit(message, headers)

Dedup, rate limiting and priority admission slot in between validation and
forwarding in later work; the idempotency key they need is derived here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.ingest.validation import validate_inbound
from clawmesh.shared import metadata as md
from clawmesh.shared.context import call_options
from clawmesh.shared.errors import PermissionDenied
from clawmesh.shared.settings import MeshSettings

PRIORITY_NAMES = {v: k.removeprefix("PRIORITY_").lower() for k, v in common_pb2.Priority.items()}


def idempotency_key(message: common_pb2.InboundMessage) -> str:
    """Tenant + channel + channel message id; else sender + content hash."""
    if message.idempotency_key:
        return message.idempotency_key
    if message.channel_message_id:
        basis = f"{message.tenant}\x1f{message.channel}\x1fid\x1f{message.channel_message_id}"
    else:
        content = hashlib.sha256(message.content.encode("utf-8")).hexdigest()
        basis = f"{message.tenant}\x1f{message.channel}\x1fsender\x1f{message.sender}\x1f{content}"
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
        forward.idempotency_key = idempotency_key(forward)
        out = {
            md.TENANT: tenant,
            md.REQUEST_ID: headers.get(md.REQUEST_ID) or uuid.uuid4().hex,
            md.IDEMPOTENCY_KEY: forward.idempotency_key,
            md.PRIORITY: PRIORITY_NAMES[forward.priority],
        }
        return forward, out

    def _opts(self, headers: dict[str, str]) -> dict:
        return call_options(self.settings.call_timeout_s, self.settings.deadline_reserve_ms, headers)

    async def submit(self, message, present: bool, headers: dict[str, str]) -> common_pb2.Reply:
        forward, out = self.admit(message, present, headers)
        response = await self.routing.Dispatch(
            routing_pb2.DispatchRequest(message=forward), **self._opts(out)
        )
        return response.reply

    async def stream(self, forward: common_pb2.InboundMessage,
                     out: dict[str, str]) -> AsyncIterator[common_pb2.ReplyChunk]:
        """Stream the reply to a message that ``admit`` returned."""
        call = self.routing.DispatchStream(
            routing_pb2.DispatchStreamRequest(message=forward), **self._opts(out)
        )
        try:
            async for response in call:
                yield response.chunk
        finally:
            call.cancel()
