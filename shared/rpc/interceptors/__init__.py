"""The two interceptor chains, declared in one place, each interceptor a module.

Server (outermost first): tracing -> context -> metrics -> errors -> auth (API key at
the edge, mesh token inside, as the process's security asks: ``auth``) -> deadline ->
handler. (The edge gate — rate limits, dedup, admission — runs in ingest's core, once
per validated message: see services/ingest/edge.py.)

Client (outermost first): tracing -> propagation (deadline + metadata) -> retry
(idempotent methods, one layer) -> circuit breaker (per target and method) -> transport.

Health, reflection and the Exchange streams themselves bypass the server chain
(``shared.rpc.filters.default_bypass``); the logical calls inside an Exchange
stream go through it like any RPC.
"""

from __future__ import annotations

from clawmesh.shared.breaker import BreakerRegistry
from clawmesh.shared.rpc.chain import HandlerInterceptor
from clawmesh.shared.rpc.client import ClientInterceptor
from clawmesh.shared.rpc.interceptors.auth import auth_interceptors
from clawmesh.shared.rpc.interceptors.breaker import BreakerInterceptor
from clawmesh.shared.rpc.interceptors.context import ContextInterceptor
from clawmesh.shared.rpc.interceptors.deadline import DeadlineInterceptor
from clawmesh.shared.rpc.interceptors.errors import ErrorInterceptor
from clawmesh.shared.rpc.interceptors.metrics import MetricsInterceptor
from clawmesh.shared.rpc.interceptors.propagation import PropagationInterceptor
from clawmesh.shared.rpc.interceptors.retry import RetryInterceptor
from clawmesh.shared.rpc.interceptors.tracing import TracingClientInterceptor, TracingServerInterceptor


def server_chain(stats=None, min_budget_ms: float = 5.0) -> list[HandlerInterceptor]:
    """The server chain; ``stats`` (an RpcStats) receives per-call figures; a call with
    less than ``min_budget_ms`` left is refused (DEADLINE_EXCEEDED) before its handler."""
    chain: list[HandlerInterceptor] = [TracingServerInterceptor(), ContextInterceptor()]
    if stats is not None:
        chain.append(MetricsInterceptor(stats))
    chain += [ErrorInterceptor(), *auth_interceptors(), DeadlineInterceptor(min_budget_ms)]
    return chain


def client_chain(cap_s: float, reserve_ms: float, target: str = "",
                 breakers: BreakerRegistry | None = None,
                 retry: RetryInterceptor | None = None) -> list[ClientInterceptor]:
    """The client chain of every outbound mesh call to ``target``."""
    chain: list[ClientInterceptor] = [*TracingClientInterceptor.if_enabled(),
                                      PropagationInterceptor(cap_s, reserve_ms)]
    if retry is not None:
        chain.append(retry)  # outside the breaker: each attempt asks it, an open one ends them
    if breakers is not None:
        chain.append(BreakerInterceptor(target, breakers))
    return chain


__all__ = ["BreakerInterceptor", "ContextInterceptor", "DeadlineInterceptor", "ErrorInterceptor",
           "MetricsInterceptor",
           "PropagationInterceptor", "RetryInterceptor", "client_chain", "server_chain"]
