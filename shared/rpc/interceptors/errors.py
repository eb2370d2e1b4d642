"""Maps exceptions to a status with rich details (shared.errors is the table)."""

from __future__ import annotations

import logging

import grpc

from clawmesh.shared import metadata as md
from clawmesh.shared.errors import CODES, ClawMeshError, status_of
from clawmesh.shared.rpc.chain import HandlerInterceptor

log = logging.getLogger(__name__)


class ErrorInterceptor(HandlerInterceptor):
    """Domain exceptions -> their status; anything unexpected -> INTERNAL, logged, never a crash."""

    async def _abort(self, context, exc: Exception):
        if not isinstance(exc, ClawMeshError | grpc.aio.AioRpcError):
            log.exception("unhandled error in handler")
        status = status_of(exc)
        code = CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        # Keep what the handler already put in the trailers (e.g. the request id).
        trailing = (*(context.trailing_metadata() or ()),
                    (md.STATUS_DETAILS, status.SerializeToString()))
        if isinstance(exc, grpc.aio.AioRpcError) or getattr(exc, "downstream", False):
            trailing = (*trailing, (md.FAULT_ORIGIN, "downstream"))
        await context.abort(code, status.message, trailing_metadata=trailing)

    async def unary(self, method, call_next, request, context):
        try:
            return await call_next(request, context)
        except grpc.aio.AbortError:  # context.abort() already chose the status
            raise
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)

    async def stream(self, method, call_next, request, context):
        try:
            async for response in call_next(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc)
