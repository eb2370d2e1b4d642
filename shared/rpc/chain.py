"""The shape every server interceptor has, and the one helper that applies it.

A server interceptor is a small class with two hooks: ``unary`` for handlers
that return one response, ``stream`` (an async generator, so whatever it holds
is released when the stream ends) for handlers that stream responses. The chain
is applied once per method when the server registers its handlers — never per
call — and the same wrapped handler serves a plain RPC and a logical call on an
Exchange stream (``shared.rpc.exchange_server``)::

    wrapped = wrap_method(handler, "/pkg.Svc/Method", [ContextInterceptor(), ...])

The order of the chain is declared in ``shared.rpc.interceptors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from clawmesh.shared.rpc.filters import Filter, default_bypass


class HandlerInterceptor:
    """Base: override ``unary`` and/or ``stream``; both default to pass-through."""

    def __init__(self, bypass: Filter = default_bypass) -> None:
        self.bypass = bypass

    async def unary(self, method: str, call_next, request, context):
        return await call_next(request, context)

    async def stream(self, method: str, call_next, request, context) -> AsyncIterator:
        async for response in call_next(request, context):
            yield response


def _unary(ic: HandlerInterceptor, method: str, inner):
    hook = ic.unary

    async def behavior(request, context):
        return await hook(method, inner, request, context)

    return behavior


def _stream(ic: HandlerInterceptor, method: str, inner):
    hook = ic.stream

    async def behavior(request, context):
        async for response in hook(method, inner, request, context):
            yield response

    return behavior


def wrap_method(handler: grpc.RpcMethodHandler, method: str,
                chain: Sequence[HandlerInterceptor]) -> grpc.RpcMethodHandler:
    """``handler`` with ``chain`` around it (outermost first), for any of the four shapes."""
    active = [ic for ic in chain if not ic.bypass(method)]
    if not active:
        return handler
    unary_response = handler.unary_unary or handler.stream_unary
    behavior = unary_response or handler.unary_stream or handler.stream_stream
    wrap = _unary if unary_response else _stream
    for ic in reversed(active):
        behavior = wrap(ic, method, behavior)
    if handler.unary_unary:
        make = grpc.unary_unary_rpc_method_handler
    elif handler.stream_unary:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.unary_stream:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.stream_stream_rpc_method_handler
    return make(behavior, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class HandlerCapture:
    """Stands in for a server to catch what a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.generic = 0

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic += len(handlers)

    def check(self, what: str) -> None:
        """Fail loudly when a registration function gave only opaque generic handlers."""
        if self.generic > len(self.handlers):
            raise ValueError(f"{what}: registers generic handlers only (per-method handlers "
                             "are needed to apply the interceptor chain)")

    def add_registered_method_handlers(self, service: str, handlers) -> None:
        self.handlers[service] = dict(handlers)
