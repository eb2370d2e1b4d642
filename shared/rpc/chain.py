"""Server interceptors and the one place their order is declared.

Each interceptor is a small class over ``wrap_handler``, the helper that wraps
the four RPC shapes once: a unary-response hook (``unary``) and a
streaming-response hook (``stream``, an async generator, so whatever it holds
is released when the stream ends). Health and reflection bypass them all.

Order (outermost first): context -> metrics -> errors -> handler. Later issues
slot tracing (first), auth, rate limit and dedup (after errors) into
``server_interceptors``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from clawmesh.shared import context as callctx
from clawmesh.shared import metadata as md
from clawmesh.shared.errors import CODES, ClawMeshError, status_of

log = logging.getLogger(__name__)

BYPASS_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_infrastructure(method: str) -> bool:
    """Health checks and reflection: never limited, deduplicated or counted."""
    return method.startswith(BYPASS_PREFIXES)


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """Base: override ``unary`` and/or ``stream``; both default to pass-through."""

    def __init__(self, bypass: Callable[[str], bool] = is_infrastructure) -> None:
        self.bypass = bypass

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or self.bypass(handler_call_details.method):
            return handler
        return wrap_handler(handler, handler_call_details.method, self)

    async def unary(self, method: str, call_next, request, context):
        return await call_next(request, context)

    async def stream(self, method: str, call_next, request, context) -> AsyncIterator:
        async for response in call_next(request, context):
            yield response


def wrap_handler(handler: grpc.RpcMethodHandler, method: str, ic: HandlerInterceptor):
    """Return ``handler`` with ``ic`` around it, for any of the four RPC shapes."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_behavior(request, context):
            return await ic.unary(method, inner, request, context)

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary_behavior, **kwargs)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def stream_behavior(request, context):
        async for response in ic.stream(method, inner_stream, request, context):
            yield response

    make = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return make(stream_behavior, **kwargs)


class ContextInterceptor(HandlerInterceptor):
    """Records the call's deadline and propagated metadata for outbound calls."""

    def _enter(self, method: str, context) -> object:
        remaining = context.time_remaining()
        headers = md.to_dict(context.invocation_metadata())
        deadline = None if remaining is None else time.monotonic() + remaining
        return callctx.set_current(callctx.CallInfo(method, deadline, headers))

    async def unary(self, method, call_next, request, context):
        token = self._enter(method, context)
        try:
            return await call_next(request, context)
        finally:
            callctx.reset(token)

    async def stream(self, method, call_next, request, context):
        # Async generators run each step in the consumer's context, so set the
        # value for the whole stream and never reset across a yield.
        self._enter(method, context)
        async for response in call_next(request, context):
            yield response


class ErrorInterceptor(HandlerInterceptor):
    """Maps exceptions to a status with rich details (shared.errors is the table)."""

    async def _abort(self, context, exc: Exception):
        if not isinstance(exc, ClawMeshError | grpc.aio.AioRpcError):
            log.exception("unhandled error in handler")
        status = status_of(exc)
        code = CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        details = ((md.STATUS_DETAILS, status.SerializeToString()),)
        await context.abort(code, status.message, trailing_metadata=details)

    async def unary(self, method, call_next, request, context):
        try:
            return await call_next(request, context)
        except Exception as exc:  # noqa: BLE001 - unexpected ones are bugs: INTERNAL, never a crash
            if _is_abort(exc):
                raise
            await self._abort(context, exc)

    async def stream(self, method, call_next, request, context):
        try:
            async for response in call_next(request, context):
                yield response
        except Exception as exc:  # noqa: BLE001
            if _is_abort(exc):
                raise
            await self._abort(context, exc)


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio raises its own AbortError out of context.abort(); let it through.
    return type(exc).__name__ == "AbortError"


class MetricsInterceptor(HandlerInterceptor):
    """Records ``rpc.server.duration`` (ms) per method and status code."""

    def __init__(self, meter, bypass: Callable[[str], bool] = is_infrastructure) -> None:
        super().__init__(bypass)
        self.duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="server-side RPC latency"
        )

    def _record(self, method: str, context, started: float, outcome: grpc.StatusCode) -> None:
        # context.code() is set when the call was aborted; else the outcome we saw.
        code = context.code() or outcome
        value = code.value[0] if isinstance(code, grpc.StatusCode) else int(code)
        self.duration.record(
            (time.perf_counter() - started) * 1000.0,
            {"rpc.method": method, "rpc.grpc.status_code": value},
        )

    async def unary(self, method, call_next, request, context):
        started = time.perf_counter()
        outcome = grpc.StatusCode.UNKNOWN
        try:
            response = await call_next(request, context)
            outcome = grpc.StatusCode.OK
            return response
        except asyncio.CancelledError:
            outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._record(method, context, started, outcome)

    async def stream(self, method, call_next, request, context):
        started = time.perf_counter()
        outcome = grpc.StatusCode.UNKNOWN
        try:
            async for response in call_next(request, context):
                yield response
            outcome = grpc.StatusCode.OK
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away mid-stream: not a server fault.
            outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._record(method, context, started, outcome)


def server_interceptors(meter=None) -> list[grpc.aio.ServerInterceptor]:
    """The server chain, outermost first. The only place the order is declared."""
    chain: list[grpc.aio.ServerInterceptor] = [ContextInterceptor()]
    if meter is not None:
        chain.append(MetricsInterceptor(meter))
    chain.append(ErrorInterceptor())
    return chain
