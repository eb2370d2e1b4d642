"""Client side: retries of idempotent calls, at one layer of the mesh only.

    chain = [PropagationInterceptor(...), RetryInterceptor(RetryPolicy(max_attempts=3),
             RetryThrottle()), BreakerInterceptor(...)]

- **Which calls**: methods whose proto declares ``option idempotency_level`` (IDEMPOTENT
  or NO_SIDE_EFFECTS: GetHistory, ListSessions, Stats, Append and BatchAppend — idempotent
  by key —, ListBackends, Explain). Everything else is never retried here. Unary only.
- **Which failures**: UNAVAILABLE — also one the peer passed on from deeper in the mesh:
  the hops below this one do not retry, this one owns the retries of the whole subtree.
  A call the breaker refused (``BreakerOpen``) is retried only when its probe time comes
  within the call's budget and ``max_wait_s``: the retry waits for it, as for any
  RetryInfo, and becomes the probe (no RPC was made: the throttle is not charged).
- **How**: gRPC's retry policy (gRFC A6): ``max_attempts`` in all, full-jitter exponential
  backoff (``shared.retry.RetryPolicy``) never shorter than the server's RetryInfo, and
  retry throttling per target (``RetryThrottle``). The channel's own retries stay off, and
  logical calls on Exchange streams are invisible to them anyway: this is the one layer.
- **Never past the deadline**: each attempt gets the time left of the call's budget; a
  wait that would leave less than ``min_attempt_s`` ends the retries with the last error.
- **One layer**: every attempt carries ``x-clawmesh-attempt: n``, propagated down the call
  tree; a hop serving a call that carries it does not retry its own calls (its caller
  retries the whole subtree), so N configured attempts mean at most N at the failing peer.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc
from google.protobuf import descriptor_pool

from clawmesh.shared import context as callctx
from clawmesh.shared import metadata as md
from clawmesh.shared.breaker import BreakerOpen
from clawmesh.shared.errors import retry_after_of
from clawmesh.shared.retry import RetryPolicy, RetryThrottle
from clawmesh.shared.rpc.client import Call, ClientInterceptor

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# The least wait before calling an open breaker again: event-loop timers have millisecond
# resolution, and a wait shorter than that would spin through the attempts before the
# breaker's probe time has actually come.
MIN_BREAKER_WAIT_S = 0.002


def idempotent(method: str) -> bool:
    """Whether ``/pkg.Service/Method`` declares an idempotency level in its proto."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return False
    return found.GetOptions().idempotency_level != 0  # IDEMPOTENCY_UNKNOWN


class RetryInterceptor(ClientInterceptor):
    def __init__(self, policy: RetryPolicy, throttle: RetryThrottle, *, min_attempt_s: float = 0.005,
                 rng: random.Random | None = None, sleep=asyncio.sleep, clock=time.monotonic) -> None:
        self.policy = policy
        self.throttle = throttle
        self.min_attempt_s = min_attempt_s
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self._idempotent: dict[str, bool] = {}

    def _retries(self, method: str) -> bool:
        known = self._idempotent.get(method)
        if known is None:
            known = self._idempotent[method] = idempotent(method)
        if not known or self.policy.max_attempts < 2:
            return False
        info = callctx.current()
        return info is None or md.ATTEMPT not in info.headers  # an outer hop retries: not here

    def _give_up(self, error: grpc.aio.AioRpcError, attempt: int) -> bool:
        if error.code() not in RETRYABLE or attempt >= self.policy.max_attempts:
            return True
        return not self.throttle.allows_retry()

    async def unary(self, call: Call, call_next):
        if not self._retries(call.method):
            return await call_next(call)
        deadline = None if call.timeout is None else self.clock() + call.timeout
        metadata = call.metadata
        attempt = 1
        while True:
            call.metadata = (*metadata, (md.ATTEMPT, str(attempt)))
            try:
                response = await call_next(call)
            except BreakerOpen as refused:
                if attempt >= self.policy.max_attempts:
                    raise
                wait = max(refused.retry_after_s or 0.0, MIN_BREAKER_WAIT_S)
                if self._too_late(wait, deadline):
                    raise
            except grpc.aio.AioRpcError as error:
                self.throttle.on_failure()
                if self._give_up(error, attempt):
                    raise
                wait = self.policy.wait_s(attempt, retry_after_of(error), self.rng)
                if self._too_late(wait, deadline):
                    raise
            else:
                self.throttle.on_success()
                return response
            await self.sleep(wait)
            if deadline is not None:
                call.timeout = deadline - self.clock()
            attempt += 1

    def _too_late(self, wait: float, deadline: float | None) -> bool:
        """Whether waiting ``wait`` would leave no time for another attempt (or is too long)."""
        left = None if deadline is None else deadline - self.clock() - wait
        return wait > self.policy.max_wait_s or (left is not None and left < self.min_attempt_s)
