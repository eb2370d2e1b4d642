"""Records each call's deadline and metadata for the calls it makes (shared.context)."""

from __future__ import annotations

import time

from clawmesh.shared import context as callctx
from clawmesh.shared.rpc.chain import HandlerInterceptor
from clawmesh.shared.rpc.exchange_server import ExchangeContext


class ContextInterceptor(HandlerInterceptor):
    """Sets ``shared.context.current()`` for the duration of the handler."""

    @staticmethod
    def _info(method: str, context) -> callctx.CallInfo:
        if isinstance(context, ExchangeContext):  # already a dict: no rebuilding
            return callctx.CallInfo(method, context.deadline, context.headers)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return callctx.CallInfo(method, deadline, context.invocation_metadata())

    async def unary(self, method, call_next, request, context):
        token = callctx.set_current(self._info(method, context))
        try:
            return await call_next(request, context)
        finally:
            callctx.reset(token)

    async def stream(self, method, call_next, request, context):
        # Async generators run each step in the consumer's context, so set the
        # value for the whole stream and never reset across a yield.
        callctx.set_current(self._info(method, context))
        async for response in call_next(request, context):
            yield response
