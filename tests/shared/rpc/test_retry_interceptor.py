"""Retries in the client chain, against real servers on both transports.

Only methods whose proto declares an idempotency level are retried (ListBackends
here; Generate never), only on UNAVAILABLE, at most ``max_attempts`` in all, never past
the call's deadline, and at one layer: a hop serving a call that its caller retries
(``x-clawmesh-attempt``) does not retry its own calls — N attempts, not N².
"""

from __future__ import annotations

import random

import grpc
import pytest

from clawmesh.provider.v1 import provider_pb2
from clawmesh.services.provider.client import ProviderClient
from clawmesh.shared import context as callctx
from clawmesh.shared.errors import Unavailable
from clawmesh.shared.retry import RetryPolicy, RetryThrottle
from clawmesh.shared.rpc.client import UnaryTransport
from clawmesh.shared.rpc.exchange_client import ExchangeTransport
from clawmesh.shared.rpc.interceptors import RetryInterceptor, client_chain
from clawmesh.shared.rpc.interceptors.retry import idempotent
from tests.shared.rpc.test_exchange import SERVICE, Provider, request, start


class Sleeps:
    """An injected sleep that records the waits (no real time passes)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Failing(Provider):
    """ListBackends fails with UNAVAILABLE ``failures`` times, then answers; records attempts."""

    def __init__(self, failures: int = 10**9, relay: ProviderClient | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.relay = relay
        self.attempt_headers: list[str | None] = []

    async def ListBackends(self, request_, context):
        self.attempt_headers.append(callctx.current().headers.get("x-clawmesh-attempt"))
        if self.relay is not None:
            return await self.relay.backends()
        if len(self.attempt_headers) <= self.failures:
            raise Unavailable("memory restarting")
        return provider_pb2.ListBackendsResponse()

    async def Generate(self, request_, context):
        self.calls += 1
        raise Unavailable("down")


def retrying(max_attempts: int = 3, sleeps: Sleeps | None = None) -> RetryInterceptor:
    return RetryInterceptor(RetryPolicy(max_attempts=max_attempts, backoff_base_s=0.05, backoff_max_s=1.0),
                            RetryThrottle(), rng=random.Random(1), sleep=sleeps or Sleeps())


@pytest.fixture(params=["stream", "unary"])
async def serve(request):
    made = []

    async def make(servicer, retry: RetryInterceptor, cap_s: float = 5.0, breakers=None) -> ProviderClient:
        server = await start(servicer)
        channel = grpc.aio.insecure_channel(server.address)
        transport = (ExchangeTransport(channel, SERVICE, streams=1) if request.param == "stream"
                     else UnaryTransport(channel))
        made.append((server, channel, transport))
        return ProviderClient(transport, client_chain(cap_s, 0.0, server.address, breakers, retry))

    yield make
    for server, channel, transport in made:
        await transport.close()
        await channel.close()
        await server.stop(0)


def test_idempotency_comes_from_the_proto():
    from clawmesh.memory.v1 import memory_pb2  # noqa: F401 - loads the descriptors (a client does)
    from clawmesh.routing.v1 import routing_pb2  # noqa: F401

    assert idempotent("/clawmesh.memory.v1.MemoryService/GetHistory")
    assert idempotent("/clawmesh.memory.v1.MemoryService/BatchAppend")  # idempotent by key
    assert idempotent(f"/{SERVICE}/ListBackends")
    assert not idempotent(f"/{SERVICE}/Generate")
    assert not idempotent("/clawmesh.routing.v1.RoutingService/Dispatch")
    assert not idempotent("/no.Such/Method")


async def test_an_idempotent_call_is_retried_until_it_succeeds(serve):
    sleeps = Sleeps()
    servicer = Failing(failures=2)
    client = await serve(servicer, retrying(3, sleeps))
    await client.backends()
    assert servicer.attempt_headers == ["1", "2", "3"]
    assert len(sleeps.waits) == 2
    assert 0 <= sleeps.waits[0] <= 0.05 and 0 <= sleeps.waits[1] <= 0.1  # full jitter, doubling


async def test_attempts_are_bounded_and_other_methods_never_retried(serve):
    servicer = Failing()
    client = await serve(servicer, retrying(3))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.backends()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempt_headers == ["1", "2", "3"]
    with pytest.raises(grpc.aio.AioRpcError):
        await client.generate(request("hi"))
    assert servicer.calls == 1  # Generate declares no idempotency: one attempt


async def test_a_retry_never_outlives_the_deadline(serve):
    sleeps = Sleeps()
    servicer = Failing()
    retry = RetryInterceptor(RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_max_s=1.0),
                             RetryThrottle(), rng=random.Random(7), sleep=sleeps)
    client = await serve(servicer, retry, cap_s=0.3)  # every call: 300 ms at most
    with pytest.raises(grpc.aio.AioRpcError):
        await client.backends()
    # Each wait drawn from [0, 1 s] must leave time for another attempt within 300 ms.
    assert len(servicer.attempt_headers) == len(sleeps.waits) + 1
    assert sum(sleeps.waits) < 0.3


async def test_retry_throttling_stops_retries_to_a_peer_failing_everywhere(serve):
    servicer = Failing()
    throttle = RetryThrottle(max_tokens=4, token_ratio=0.1)
    retry = RetryInterceptor(RetryPolicy(max_attempts=3), throttle, sleep=Sleeps())
    client = await serve(servicer, retry)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.backends()
    # 4 tokens, a retry only while above 2: the first failure leaves 3 (retried), the
    # second 2 (not retried); from then on each call is tried once (2 → 1 → 0).
    assert servicer.attempt_headers == ["1", "2", "1", "1"]
    assert throttle.tokens == 0


async def test_one_layer_the_inner_hop_does_not_retry_what_the_outer_retries(serve):
    far = Failing()
    inner = await serve(far, retrying(3))
    relay = Failing(relay=inner)
    outer = await serve(relay, retrying(3))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await outer.backends()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert relay.attempt_headers == ["1", "2", "3"]
    # The far peer saw one attempt per outer attempt (3), not 3 × 3: the relay saw the
    # attempt header and left the retrying to its caller; the header travelled on.
    assert far.attempt_headers == ["1", "2", "3"]


async def test_an_open_breaker_is_waited_out_within_the_budget_and_the_retry_is_its_probe(serve):
    from clawmesh.shared.breaker import BreakerConfig, BreakerRegistry, State
    from tests.fakes import FakeClock

    clock = FakeClock()

    class Advancing(Sleeps):  # the injected sleep moves the breaker's clock
        async def __call__(self, seconds: float) -> None:
            await super().__call__(seconds)
            clock.advance(seconds)

    sleeps = Advancing()
    breakers = BreakerRegistry(BreakerConfig(failure_threshold=2, open_timeout_s=0.5, success_threshold=1),
                               clock=clock)
    servicer = Failing(failures=2)
    retry = RetryInterceptor(RetryPolicy(max_attempts=5, backoff_base_s=0.01, backoff_max_s=0.01),
                             RetryThrottle(), rng=random.Random(1), sleep=sleeps)
    client = await serve(servicer, retry, breakers=breakers)
    await client.backends()
    # Two failures opened the breaker; the third attempt was refused without a call and
    # waited out the open time (0.5 s less the backoff already slept); the fourth, the
    # probe, reached the recovered server and closed the breaker.
    assert servicer.attempt_headers == ["1", "2", "4"]
    assert len(sleeps.waits) == 3 and sleeps.waits[2] == pytest.approx(0.5 - sleeps.waits[1])
    [breaker] = [breakers.get(key) for key in breakers.stats()]
    assert breaker.state is State.CLOSED


async def test_a_breaker_wait_is_never_shorter_than_a_timer_tick(serve):
    import math

    from clawmesh.shared.breaker import BreakerConfig, BreakerRegistry, State
    from tests.fakes import FakeClock

    clock = FakeClock()

    class MillisecondTimer(Sleeps):  # like the event loop: whole milliseconds only
        async def __call__(self, seconds: float) -> None:
            await super().__call__(seconds)
            clock.advance(math.floor(seconds * 1000) / 1000)

    sleeps = MillisecondTimer()
    breakers = BreakerRegistry(BreakerConfig(failure_threshold=1, open_timeout_s=0.5, success_threshold=1),
                               clock=clock)
    servicer = Failing(failures=1)
    retry = RetryInterceptor(RetryPolicy(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.01),
                             RetryThrottle(), rng=random.Random(5), sleep=sleeps)
    client = await serve(servicer, retry, breakers=breakers)
    await client.backends()
    # Attempt 2 met the open breaker and waited its (rounded-down) time; whatever sliver of
    # it was left, the next wait was at least a tick, never a spin; then the probe went.
    assert servicer.attempt_headers[0] == "1" and len(servicer.attempt_headers) == 2
    assert all(w >= 0.002 for w in sleeps.waits[1:]), sleeps.waits
    [breaker] = [breakers.get(key) for key in breakers.stats()]
    assert breaker.state is State.CLOSED


async def test_a_sub_tick_breaker_wait_is_rounded_up_to_a_tick():
    from clawmesh.provider.v1 import provider_pb2
    from clawmesh.shared.breaker import BreakerOpen, State
    from clawmesh.shared.rpc.client import Call
    from clawmesh.shared.rpc.interceptors.retry import MIN_BREAKER_WAIT_S

    sleeps = Sleeps()
    retry = RetryInterceptor(RetryPolicy(max_attempts=3), RetryThrottle(), sleep=sleeps)
    outcomes = [BreakerOpen("peer", 1e-5, State.OPEN), provider_pb2.ListBackendsResponse()]

    async def call_next(call):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    call = Call(f"/{SERVICE}/ListBackends", provider_pb2.ListBackendsRequest(),
                provider_pb2.ListBackendsResponse, timeout=5.0)
    assert await retry.unary(call, call_next) == provider_pb2.ListBackendsResponse()
    assert sleeps.waits == [MIN_BREAKER_WAIT_S]  # not 10 µs: an event-loop timer fires in whole ms
    assert dict(call.metadata)["x-clawmesh-attempt"] == "2"
