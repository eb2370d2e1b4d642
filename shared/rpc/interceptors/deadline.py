"""Refuses a call that arrives with too little time left to do any of its work.

    chain = [ContextInterceptor(), MetricsInterceptor(stats), ErrorInterceptor(),
             DeadlineInterceptor(min_budget_ms=5.0)]

A call whose deadline leaves less than ``min_budget_ms`` (every hop keeps that much back
for its own reply: ``deadline_reserve_ms``) gets DEADLINE_EXCEEDED before its handler
runs, instead of starting work whose answer nobody will wait for.
"""

from __future__ import annotations

from clawmesh.shared import context as callctx
from clawmesh.shared.errors import DeadlineExceeded
from clawmesh.shared.rpc.chain import HandlerInterceptor


class DeadlineInterceptor(HandlerInterceptor):
    def __init__(self, min_budget_ms: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.min_budget_s = min_budget_ms / 1000.0

    def _check(self, method: str) -> None:
        info = callctx.current()
        remaining = None if info is None else info.remaining()
        if remaining is not None and remaining < self.min_budget_s:
            raise DeadlineExceeded(
                f"{method} arrived with {max(remaining, 0.0) * 1000:.1f} ms left; it needs at least "
                f"{self.min_budget_s * 1000:g} ms")

    async def unary(self, method, call_next, request, context):
        self._check(method)
        return await call_next(request, context)

    async def stream(self, method, call_next, request, context):
        self._check(method)
        async for response in call_next(request, context):
            yield response
