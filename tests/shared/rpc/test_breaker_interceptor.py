"""The breaker in the client chain, against a real server over both transports.

A provider that fails with UNAVAILABLE trips the breaker of its target+method after
the preset's consecutive failures; from then on calls fail at once with UNAVAILABLE and
a RetryInfo without reaching the server; after the open timeout (a fake clock) one probe
goes through and a success closes it. INVALID_ARGUMENT never trips it.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from clawmesh.services.provider.client import ProviderClient
from clawmesh.shared.breaker import BreakerConfig, BreakerRegistry, State
from clawmesh.shared.errors import Unavailable
from clawmesh.shared.rpc.client import UnaryTransport
from clawmesh.shared.rpc.exchange_client import ExchangeTransport
from clawmesh.shared.rpc.interceptors import client_chain
from tests.conftest import trailing_status
from tests.fakes import FakeClock
from tests.shared.rpc.test_exchange import SERVICE, Provider, request, start

GENERATE = f"/{SERVICE}/Generate"


class Flaky(Provider):
    """Fails with UNAVAILABLE while ``failing``; counts every call that reached it."""

    failing = True

    async def Generate(self, request_, context):
        if self.failing and request_.messages[-1].content != "bad":
            self.calls += 1
            raise Unavailable("backend down")
        return await super().Generate(request_, context)


@pytest.fixture(params=["stream", "unary"])
async def setup(request):
    servicer = Flaky()
    server = await start(servicer)
    channel = grpc.aio.insecure_channel(server.address)
    transport = (ExchangeTransport(channel, SERVICE, streams=1) if request.param == "stream"
                 else UnaryTransport(channel))
    clock = FakeClock()
    breakers = BreakerRegistry(BreakerConfig.preset("fast_fail"), clock=clock)
    client = ProviderClient(transport, client_chain(5.0, 0.0, server.address, breakers))
    yield servicer, client, breakers, clock, server.address
    await transport.close()
    await channel.close()
    await server.stop(0)


async def test_trips_fails_fast_then_one_probe_closes_it(setup):
    servicer, client, breakers, clock, target = setup
    threshold = BreakerConfig.preset("fast_fail").failure_threshold
    for _ in range(threshold):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate(request("hi"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    breaker = breakers.get(f"{target} {GENERATE}")
    assert breaker.state is State.OPEN and servicer.calls == threshold
    # Open: refused at once, the server never sees the call; RetryInfo says when to probe.
    with pytest.raises(Unavailable) as refused:
        await client.generate(request("hi"))
    status = refused.value.to_status()
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    open_s = BreakerConfig.preset("fast_fail").open_timeout_s
    assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(open_s)
    assert servicer.calls == threshold
    # After the open timeout one probe reaches the server; its success closes the breaker.
    servicer.failing = False
    clock.advance(open_s)
    got = await client.generate(request("back"))
    assert got.message.content.startswith("p|back|")
    assert breaker.state is State.CLOSED


async def test_invalid_argument_never_trips_it(setup):
    servicer, client, breakers, clock, target = setup
    for _ in range(10):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate(request("bad"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert trailing_status(info.value).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert breakers.get(f"{target} {GENERATE}").state is State.CLOSED


async def test_a_breaker_per_method(setup):
    servicer, client, breakers, clock, target = setup
    for _ in range(5):
        with pytest.raises((grpc.aio.AioRpcError, Unavailable)):
            await client.generate(request("hi"))
    assert breakers.get(f"{target} {GENERATE}").state is State.OPEN
    chunks = [c async for c in client.generate_stream(request("hi"))]  # another method: closed
    assert chunks[-1].final
    assert breakers.get(f"{target} /{SERVICE}/GenerateStream").state is State.CLOSED


async def test_the_pool_puts_breakers_in_the_chain_only_when_enabled():
    from clawmesh.shared.rpc.channels import ChannelPool
    from clawmesh.shared.rpc.interceptors import BreakerInterceptor
    from clawmesh.shared.settings import SettingsError, load_settings

    assert ChannelPool(load_settings({})).breakers is not None  # on by default
    off = ChannelPool(load_settings({"CLAWMESH_BREAKER__ENABLED": "false"}))
    assert off.breakers is None
    assert not any(isinstance(ic, BreakerInterceptor) for ic in off.chain("127.0.0.1:1"))
    on = ChannelPool(load_settings({"CLAWMESH_BREAKER__ENABLED": "true",
                                    "CLAWMESH_BREAKER__PRESET": "strict",
                                    "CLAWMESH_BREAKER__OPEN_TIMEOUT_S": "7"}))
    chain = on.chain("127.0.0.1:1")
    assert [type(ic).__name__ for ic in chain] == [
        "PropagationInterceptor", "RetryInterceptor", "BreakerInterceptor"]
    assert chain[2].target == "127.0.0.1:1" and chain[2].registry is on.breakers
    assert on.chain("127.0.0.1:1")[1] is chain[1]  # one retry throttle per target
    assert on.breakers.get("x").config == BreakerConfig.preset("strict", open_timeout_s=7.0)
    assert off.breaker_gauges() == {}
    on.breakers.get("127.0.0.1:1 /pkg.Svc/M")
    gauges = on.breaker_gauges()
    assert gauges["state{peer=127.0.0.1:1,method=/pkg.Svc/M}"] == 1.0  # closed
    assert gauges["consecutive_failures{peer=127.0.0.1:1,method=/pkg.Svc/M}"] == 0.0
    with pytest.raises(SettingsError, match="CLAWMESH_BREAKER__PRESET"):
        load_settings({"CLAWMESH_BREAKER__PRESET": "yolo"})
    await off.close()
    await on.close()


class Relay(Provider):
    """Answers by calling another provider (as routing calls provider)."""

    def __init__(self, downstream: ProviderClient) -> None:
        super().__init__("relay")
        self.downstream = downstream

    async def Generate(self, request_, context):
        self.calls += 1
        return await self.downstream.generate(request_)


async def test_a_passed_on_failure_trips_only_the_breaker_next_to_the_fault():
    flaky = Flaky()
    far = await start(flaky)
    clock = FakeClock()
    inner_breakers = BreakerRegistry(BreakerConfig.preset("fast_fail"), clock=clock)
    inner_channel = grpc.aio.insecure_channel(far.address)
    inner = ProviderClient(UnaryTransport(inner_channel),
                           client_chain(5.0, 0.0, far.address, inner_breakers))
    relay = Relay(inner)
    near = await start(relay)
    outer_breakers = BreakerRegistry(BreakerConfig.preset("fast_fail"), clock=clock)
    outer_channel = grpc.aio.insecure_channel(near.address)
    outer = ProviderClient(UnaryTransport(outer_channel),
                           client_chain(5.0, 0.0, near.address, outer_breakers))
    try:
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await outer.generate(request("hi"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ("x-clawmesh-fault-origin", "downstream") in tuple(info.value.trailing_metadata())
        # The relay kept answering: its breaker at the caller stays closed; the breaker
        # next to the failing provider opened, so the provider saw only 3 of the 10.
        assert outer_breakers.get(f"{near.address} {GENERATE}").state is State.CLOSED
        assert inner_breakers.get(f"{far.address} {GENERATE}").state is State.OPEN
        assert relay.calls == 10 and flaky.calls == 3
    finally:
        await outer_channel.close()
        await inner_channel.close()
        await near.stop(0)
        await far.stop(0)
