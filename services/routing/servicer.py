"""Thin RoutingService servicer: decode, call the router, encode."""

from __future__ import annotations

from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from clawmesh.services.routing.core import Route, Router


def encode_route(route: Route) -> routing_pb2.RouteDecision:
    return routing_pb2.RouteDecision(
        route_name=route.name, backend=route.backend, model=route.model,
        fallback_backends=route.fallback_backends, reason=route.reason,
        history_limit=route.history_limit,
    )


class RoutingServicer(routing_pb2_grpc.RoutingServiceServicer):
    """``clawmesh.routing.v1.RoutingService`` over the ``Router`` core.

    Its dependencies' failures pass through with their own status (e.g.
    UNAVAILABLE when memory or provider is down, DEADLINE_EXCEEDED).
    """

    def __init__(self, router: Router) -> None:
        self.router = router

    async def Dispatch(self, request, context):
        """Answer one message: history, generation, the stored turn; the reply and its route."""
        reply, route = await self.router.dispatch(request.message)
        return routing_pb2.DispatchResponse(reply=reply, route=encode_route(route))

    async def DispatchStream(self, request, context):
        """As Dispatch, streaming the reply; the route rides on the first chunk."""
        async for chunk, route in self.router.dispatch_stream(request.message):
            response = routing_pb2.DispatchStreamResponse(chunk=chunk)
            if route is not None:
                response.route.CopyFrom(encode_route(route))
            yield response

    async def Explain(self, request, context):
        """The route a message would take; calls nothing, stores nothing."""
        return routing_pb2.ExplainResponse(route=encode_route(self.router.decide(request.message)))
