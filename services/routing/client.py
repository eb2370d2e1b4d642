"""Typed client of the routing service (used by ingest).

    routing = pool.client(RoutingClient, settings.routing.target())
    response = await routing.dispatch(message, headers)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.shared.rpc.client import ServiceClient


class RoutingClient(ServiceClient):
    """``clawmesh.routing.v1.RoutingService`` as domain calls.

    ``headers`` is the metadata the edge decided (tenant, request id,
    idempotency key, priority); it travels with the call to every later hop.
    """

    SERVICE = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"]

    async def dispatch(self, message: common_pb2.InboundMessage,
                       headers: dict[str, str]) -> routing_pb2.DispatchResponse:
        return await self.unary("Dispatch", routing_pb2.DispatchRequest(message=message), headers)

    def dispatch_stream(self, message: common_pb2.InboundMessage, headers: dict[str, str]
                        ) -> AsyncIterator[routing_pb2.DispatchStreamResponse]:
        return self.stream(
            "DispatchStream", routing_pb2.DispatchStreamRequest(message=message), headers)

    async def explain(self, message: common_pb2.InboundMessage) -> routing_pb2.ExplainResponse:
        return await self.unary("Explain", routing_pb2.ExplainRequest(message=message))
