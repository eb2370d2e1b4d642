"""Client side: every outbound call carries the inbound call's deadline and metadata."""

from __future__ import annotations

from clawmesh.shared import context as callctx
from clawmesh.shared.errors import DeadlineExceeded
from clawmesh.shared.rpc.client import Call, ClientInterceptor


class PropagationInterceptor(ClientInterceptor):
    """Timeout = the inbound call's remaining time minus ``reserve_ms``, capped at ``cap_s``.

    Metadata = the inbound call's propagated keys (tenant, request id, trace
    context ...) plus what the call site adds (which wins). Raises
    DeadlineExceeded before calling out when nothing is left.
    """

    def __init__(self, cap_s: float, reserve_ms: float = 5.0) -> None:
        self.cap_s = cap_s
        self.reserve_s = reserve_ms / 1000.0

    def _prepare(self, call: Call) -> None:
        info = callctx.current()
        timeout = self.cap_s if call.timeout is None else min(call.timeout, self.cap_s)
        if info is not None:
            remaining = info.remaining()
            if remaining is not None:
                budget = remaining - self.reserve_s
                if budget <= 0:
                    spent = DeadlineExceeded(f"deadline spent before calling {call.method}")
                    spent.downstream = True  # not the callee's fault, nor this service's
                    raise spent
                timeout = min(timeout, budget)
            inherited = info.propagated
            if inherited:
                if call.metadata:
                    own = {k for k, _ in call.metadata}
                    call.metadata = (*(kv for kv in inherited if kv[0] not in own), *call.metadata)
                else:
                    call.metadata = inherited
        call.timeout = timeout

    async def unary(self, call: Call, call_next):
        self._prepare(call)
        return await call_next(call)

    async def stream(self, call: Call, call_next):
        self._prepare(call)
        async for response in call_next(call):
            yield response
