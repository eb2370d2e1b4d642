"""Counts every call by method and status code, with its latency (shared.rpcstats).

The figures are aggregated in process (a bucket increment per call) and pushed
periodically over OTLP; no telemetry SDK call is on a request's path.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from clawmesh.shared.rpc.chain import HandlerInterceptor
from clawmesh.shared.rpc.filters import Filter, default_bypass

_OK = grpc.StatusCode.OK.value[0]
_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]


def _code(context, outcome: int) -> int:
    # context.code() is set when the call was aborted; else the outcome we saw.
    code = context.code()
    if code is None:
        return outcome
    return code.value[0] if isinstance(code, grpc.StatusCode) else int(code)


class MetricsInterceptor(HandlerInterceptor):
    """Records ``(method, status code, milliseconds)`` into ``stats`` (an RpcStats)."""

    def __init__(self, stats, bypass: Filter = default_bypass) -> None:
        super().__init__(bypass)
        self.record = stats.record

    async def unary(self, method, call_next, request, context):
        started = time.perf_counter()
        outcome = _UNKNOWN
        try:
            response = await call_next(request, context)
            outcome = _OK
            return response
        except asyncio.CancelledError:
            outcome = _CANCELLED
            raise
        finally:
            self.record(method, _code(context, outcome), (time.perf_counter() - started) * 1000.0)

    async def stream(self, method, call_next, request, context):
        started = time.perf_counter()
        outcome = _UNKNOWN
        try:
            async for response in call_next(request, context):
                yield response
            outcome = _OK
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away mid-stream: not a server fault.
            outcome = _CANCELLED
            raise
        finally:
            self.record(method, _code(context, outcome), (time.perf_counter() - started) * 1000.0)
