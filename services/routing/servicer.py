"""Thin RoutingService servicer: decode, call the router, encode.

    servicer = RoutingServicer(Router(memory, provider, settings))
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(servicer, server)   # main.build does this
"""

from __future__ import annotations

import math

from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from clawmesh.services.routing.core import Router
from clawmesh.services.routing.selection import HELD, MOVED, NEW, OFF, RETURNING, Plan

AFFINITY = {OFF: routing_pb2.AFFINITY_STATUS_OFF, NEW: routing_pb2.AFFINITY_STATUS_NEW,
            HELD: routing_pb2.AFFINITY_STATUS_HELD, MOVED: routing_pb2.AFFINITY_STATUS_MOVED,
            RETURNING: routing_pb2.AFFINITY_STATUS_RETURNING}
NEVER_FAILED_S = 1e9  # home_healthy_for_s of a backend that never failed


def encode_route(plan: Plan) -> routing_pb2.RouteDecision:
    """The plan as Explain and Dispatch report it: the route, its chain in order, and why."""
    route, chain, affinity = plan.route, plan.chain, plan.affinity
    first = chain[0].target
    healthy_for = affinity.home_healthy_for_s
    return routing_pb2.RouteDecision(
        route_name=route.name, backend=first.backend, model=first.model,
        fallback_backends=[c.target.backend for c in chain[1:]], reason=plan.reason,
        history_limit=route.history_limit, agent=route.agent_name, balance=route.balance,
        targets=[routing_pb2.RouteTarget(
            backend=c.target.backend, model=c.target.model, token_budget=c.target.token_budget,
            system_prompt=c.target.system_prompt, primary=c.target.primary, weight=c.target.weight,
            latency_ewma_ms=c.latency_ms or 0.0, available=c.available, retry_in_s=c.retry_in_s,
            note=c.note) for c in chain],
        affinity=routing_pb2.AffinityInfo(
            status=AFFINITY[affinity.status], home=affinity.home, current=affinity.current,
            home_healthy_for_s=NEVER_FAILED_S if math.isinf(healthy_for) else healthy_for,
            return_after_s=affinity.return_after_s),
    )


class RoutingServicer(routing_pb2_grpc.RoutingServiceServicer):
    """``clawmesh.routing.v1.RoutingService`` over the ``Router`` core.

    Its dependencies' failures pass through with their own status (e.g. INVALID_ARGUMENT from
    the provider, UNAVAILABLE when memory is down, DEADLINE_EXCEEDED); when every target of
    the route failed: UNAVAILABLE with a RetryInfo.
    """

    def __init__(self, router: Router) -> None:
        self.router = router

    async def Dispatch(self, request, context):
        """Answer one message: history, generation (failover, agent loop), the stored turn."""
        reply, outcome = await self.router.dispatch(request.message)
        return routing_pb2.DispatchResponse(reply=reply, route=encode_route(outcome.plan),
                                            failovers=outcome.failovers, agent=outcome.agent)

    async def DispatchStream(self, request, context):
        """As Dispatch, streaming the reply; the route rides on the first response, each switch
        of target on the next response, the agent record on the final one."""
        async for part in self.router.dispatch_stream(request.message):
            response = routing_pb2.DispatchStreamResponse(chunk=part.chunk, failovers=part.failovers,
                                                          agent=part.agent)
            if part.plan is not None:
                response.route.CopyFrom(encode_route(part.plan))
            yield response

    async def Explain(self, request, context):
        """The route a message would take now, its chain and why; calls nothing, stores nothing."""
        return routing_pb2.ExplainResponse(route=encode_route(self.router.decide(request.message)))
