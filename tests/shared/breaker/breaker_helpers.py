"""Helpers of the breaker tests (no pytest fixtures here: see conftest.py)."""

from __future__ import annotations

import asyncio

import grpc

from clawmesh.shared.breaker import CircuitBreaker

NAME = "routing:50052/clawmesh.routing.v1.RoutingService/Route"


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


UNAVAILABLE = rpc_error(grpc.StatusCode.UNAVAILABLE)


def finish(breaker: CircuitBreaker, exc: BaseException | None = None, times: int = 1) -> None:
    """``times`` calls that are admitted and end at once: returning, or raising ``exc``."""
    for _ in range(times):
        token = breaker.acquire()
        if exc is None:
            token.record_success()
        else:
            token.record_exception(exc)


async def settle(rounds: int = 5) -> None:
    """Let every ready task run (no time passes: the loop just turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
