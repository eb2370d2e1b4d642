"""Client side: a circuit breaker per target and method (``shared.breaker`` does the work).

    chain = [PropagationInterceptor(...), BreakerInterceptor("memory:50054", registry)]

A call to a peer whose breaker is open fails at once with UNAVAILABLE and a RetryInfo
(the time until a probe may go) instead of waiting out its deadline; the outcome of
every admitted call is reported to the breaker (a stream's when it ends). What counts
as a failure is ``shared.breaker.outcome``: server faults, never INVALID_ARGUMENT,
NOT_FOUND or the caller's own cancellation.
"""

from __future__ import annotations

from clawmesh.shared.breaker import BreakerRegistry, CircuitBreaker
from clawmesh.shared.rpc.client import Call, ClientInterceptor


class BreakerInterceptor(ClientInterceptor):
    """Breakers keyed ``<target> <method>`` in ``registry`` (shared by the process)."""

    def __init__(self, target: str, registry: BreakerRegistry) -> None:
        self.target = target
        self.registry = registry
        self._breakers: dict[str, CircuitBreaker] = {}

    def _breaker(self, method: str) -> CircuitBreaker:
        breaker = self._breakers.get(method)
        if breaker is None:
            breaker = self._breakers[method] = self.registry.get(f"{self.target} {method}")
        return breaker

    async def unary(self, call: Call, call_next):
        token = self._breaker(call.method).acquire()  # BreakerOpen -> UNAVAILABLE + RetryInfo
        try:
            response = await call_next(call)
        except BaseException as exc:
            token.record_exception(exc)
            raise
        token.record_success()
        return response

    async def stream(self, call: Call, call_next):
        token = self._breaker(call.method).acquire()
        try:
            async for response in call_next(call):
                yield response
        except BaseException as exc:  # GeneratorExit / CancelledError: the caller left, ignored
            token.record_exception(exc)
            raise
        token.record_success()
