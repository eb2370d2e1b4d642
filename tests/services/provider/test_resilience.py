"""Per-backend breaker and retries through a real grpc.aio provider and the HTTP stand-in.

The breakers run on a FakeClock and retries sleep through a recorder (the waits are
asserted, no wall time passes); every request that reaches the backend is in ``api.requests``.
"""

import asyncio
import contextlib
import json
import random
import time
from types import SimpleNamespace

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.backends import BackendUnavailable, RateLimited
from clawmesh.services.provider.core import Provider
from clawmesh.services.provider.main import build
from clawmesh.services.provider.resilience import RetryPolicy
from clawmesh.shared.errors import bad_request_fields, retry_after_of
from clawmesh.shared.settings import MockBackendConfig, OpenAIBackendConfig, ProviderSettings
from tests.conftest import trailing_status
from tests.fakes import FakeClock
from tests.openai_standin import Reply, Status

MESSAGES = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CLOSED, OPEN, HALF_OPEN = (provider_pb2.BREAKER_STATE_CLOSED, provider_pb2.BREAKER_STATE_OPEN,
                           provider_pb2.BREAKER_STATE_HALF_OPEN)
SEEN = 5.0  # generous bound for events that must happen (never reached when things work)


class Sleeps:
    """An injected ``sleep`` that records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


class TopOfRange(random.Random):
    """Jitter that always draws the bound: the backoff itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
async def serve(settings, api):
    """``await serve(**standin_config)``: a started provider whose default backend is the stand-in."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(rng: random.Random | None = None, **standin) -> SimpleNamespace:
            settings.provider = ProviderSettings(port=0, default_backend="standin", backends={
                "standin": OpenAIBackendConfig(base_url=api.url, model="gpt-test", **standin),
                "mock": MockBackendConfig(),
            })
            clock, sleeps = FakeClock(), Sleeps()
            provider = Provider.from_settings(settings.provider, env={}, clock=clock,
                                              rng=rng or random.Random(7), sleep=sleeps)
            server = await build(settings, provider=provider)
            await server.start()
            stack.push_async_callback(server.stop, 0)
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            return SimpleNamespace(stub=provider_pb2_grpc.ProviderServiceStub(channel), clock=clock,
                                   sleeps=sleeps, breaker=provider.backends["standin"].breaker)

        yield start


async def generate(stub, deadline_s=5.0, **kwargs) -> provider_pb2.GenerateResponse:
    return await stub.Generate(provider_pb2.GenerateRequest(messages=MESSAGES, **kwargs), timeout=deadline_s)


async def stream(stub, deadline_s=5.0, **kwargs) -> list[provider_pb2.GenerateStreamResponse]:
    request = provider_pb2.GenerateStreamRequest(messages=MESSAGES, **kwargs)
    return [c async for c in stub.GenerateStream(request, timeout=deadline_s)]


async def fails(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def status_of(stub, name="standin") -> provider_pb2.BackendStatus:
    reply = await stub.ListBackends(provider_pb2.ListBackendsRequest(), timeout=5)
    return {b.name: b for b in reply.backends}[name]


async def until(condition) -> None:
    async with asyncio.timeout(SEEN):
        while not condition():  # noqa: ASYNC110 - the condition is another object's counter
            await asyncio.sleep(0.005)


# -- the breaker ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", [generate, stream])
async def test_breaker_opens_after_faults_then_fails_fast(serve, api, call):
    mesh = await serve(retry={"max_attempts": 1})  # fast_fail: open after 3 faults in a row
    api.script(Status(500), Status(503), Reply("a b", malformed_after=1) if call is stream else Status(502))
    for _ in range(3):
        assert (await fails(call(mesh.stub))).code() == UNAVAILABLE
    assert (await status_of(mesh.stub)).breaker_state == OPEN

    for refused in (generate, stream):
        err = await fails(refused(mesh.stub))
        assert err.code() == UNAVAILABLE and "circuit breaker standin is open" in err.details()
        assert retry_after_of(err) == 5.0  # fast_fail's open_timeout_s, on the fake clock
    assert len(api.requests) == 3  # refused calls never reach the backend
    assert mesh.sleeps.waits == []  # and are not retried


async def test_after_open_timeout_exactly_one_probe_goes_and_its_success_closes(serve, api):
    mesh = await serve(retry={"max_attempts": 1})
    api.script(*[Status(500)] * 3)
    for _ in range(3):
        await fails(generate(mesh.stub))
    mesh.clock.advance(4.9)
    assert (await fails(generate(mesh.stub))).code() == UNAVAILABLE and len(api.requests) == 3

    mesh.clock.advance(0.1)
    assert (await status_of(mesh.stub)).breaker_state == HALF_OPEN
    api.script(Reply("probe ok", delay_s=0.2))
    probe = asyncio.ensure_future(generate(mesh.stub))
    await until(lambda: len(api.requests) == 4)
    others = await asyncio.gather(*(fails(generate(mesh.stub)) for _ in range(3)),
                                  fails(stream(mesh.stub)))
    assert {e.code() for e in others} == {UNAVAILABLE}
    assert all("half_open" in e.details() and retry_after_of(e) == 5.0 for e in others)
    assert (await probe).message.content == "probe ok"
    assert len(api.requests) == 4  # the probe alone

    assert (await status_of(mesh.stub)).breaker_state == CLOSED
    assert (await generate(mesh.stub)).message.content == "hello from the stand-in"
    assert len(api.requests) == 5


async def test_a_failed_probe_reopens_the_breaker(serve, api):
    mesh = await serve(retry={"max_attempts": 1})
    api.script(*[Status(500)] * 4)
    for _ in range(3):
        await fails(generate(mesh.stub))
    mesh.clock.advance(5)
    await fails(generate(mesh.stub))  # the probe fails
    assert (await status_of(mesh.stub)).breaker_state == OPEN
    assert retry_after_of(await fails(generate(mesh.stub))) == 5.0
    assert len(api.requests) == 4


async def test_stream_timeouts_count_as_failures(serve, api):
    mesh = await serve(retry={"max_attempts": 1}, first_token_timeout_s=0.1, stall_timeout_s=0.1)
    api.script(Reply(first_chunk_delay_s=2), Reply("a b", stall_after=1, stall_s=2),
               Reply(first_chunk_delay_s=2))
    for expected in ("first token", "stalled", "first token"):
        assert expected in (await fails(stream(mesh.stub))).details()
    assert mesh.breaker.failures == 3 and (await status_of(mesh.stub)).breaker_state == OPEN


async def test_bad_requests_and_rate_limits_do_not_open_fast_fail(serve, api):
    mesh = await serve(retry={"max_attempts": 1})
    api.script(*[Status(400)] * 3, *[Status(429, headers={"Retry-After": "1"})] * 3)
    for _ in range(6):
        await fails(generate(mesh.stub))
    assert (mesh.breaker.successes, mesh.breaker.failures) == (6, 0)
    assert (await status_of(mesh.stub)).breaker_state == CLOSED


async def test_rate_limits_open_a_breaker_that_counts_them(serve, api):
    mesh = await serve(retry={"max_attempts": 1}, breaker={"preset": "strict", "open_timeout_s": 30})
    api.script(*[Status(429, headers={"Retry-After": "1"})] * 3)
    for _ in range(3):
        assert (await fails(generate(mesh.stub))).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    err = await fails(generate(mesh.stub))
    assert (err.code(), retry_after_of(err)) == (UNAVAILABLE, 30.0)


async def test_a_cancelled_call_is_not_counted(serve, api):
    mesh = await serve(breaker={"failure_threshold": 1})
    api.script(Reply(delay_s=30), Reply("a b c", stall_after=1, stall_s=30))
    call = mesh.stub.Generate(provider_pb2.GenerateRequest(messages=MESSAGES), timeout=10)
    await until(lambda: len(api.requests) == 1)
    call.cancel()
    chunks = mesh.stub.GenerateStream(provider_pb2.GenerateStreamRequest(messages=MESSAGES), timeout=10)
    assert (await anext(aiter(chunks))).delta == "a"
    chunks.cancel()
    await asyncio.wait_for(api.requests[1].disconnected.wait(), SEEN)
    await until(lambda: mesh.breaker.ignored == 2)
    assert (mesh.breaker.failures, mesh.breaker.in_flight) == (0, 0)
    assert (await status_of(mesh.stub)).breaker_state == CLOSED


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [generate, stream])
async def test_rate_limit_is_retried_once_after_its_retry_after(serve, api, call):
    mesh = await serve()
    api.script(Status(429, headers={"Retry-After": "0.05"}), Reply("second time lucky"))
    if call is generate:
        assert (await generate(mesh.stub)).message.content == "second time lucky"
    else:
        assert "".join(c.delta for c in await stream(mesh.stub)) == "second time lucky"
    assert len(api.requests) == 2
    [wait] = mesh.sleeps.waits
    assert 0.05 <= wait <= 0.1  # the Retry-After, or the first backoff (jitter up to 0.1 s) if longer


async def test_backoff_doubles_up_to_max_attempts(serve, api):
    mesh = await serve(rng=TopOfRange(), breaker={"failure_threshold": 10},
                       retry={"max_attempts": 4, "backoff_base_s": 0.1, "backoff_max_s": 0.3})
    api.script(*[Status(503)] * 4)
    err = await fails(generate(mesh.stub))
    assert err.code() == UNAVAILABLE and "HTTP 503" in err.details()
    assert len(api.requests) == 4
    assert mesh.sleeps.waits == pytest.approx([0.1, 0.2, 0.3])


def test_jitter_is_uniform_below_the_backoff():
    policy, rng = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0), random.Random(3)
    waits = [policy.wait_s(3, BackendUnavailable("down").retry_after_s, rng) for _ in range(200)]
    assert all(0 <= w <= 0.4 for w in waits) and len(set(waits)) == 200
    assert policy.wait_s(1, RateLimited("slow down", 2.5).retry_after_s, rng) == 2.5


@pytest.mark.parametrize("retry_after, retried", [("0.5", True), ("3", False)])
async def test_retries_never_wait_past_the_deadline(serve, api, retry_after, retried):
    mesh = await serve(retry={"max_attempts": 3, "max_wait_s": 60})
    api.script(Status(503, headers={"Retry-After": retry_after}), Reply("ok"))
    started = time.monotonic()
    if retried:
        assert (await generate(mesh.stub, deadline_s=2)).message.content == "ok"
        assert mesh.sleeps.waits == [0.5]
    else:
        err = await fails(generate(mesh.stub, deadline_s=2))
        assert (err.code(), retry_after_of(err)) == (UNAVAILABLE, 3.0)  # the last error, at once
        assert mesh.sleeps.waits == [] and len(api.requests) == 1
        assert time.monotonic() - started < 1.5


async def test_a_retry_after_beyond_max_wait_fails_at_once(serve, api):
    mesh = await serve(retry={"max_wait_s": 1})
    api.script(Status(429, headers={"Retry-After": "2"}))
    err = await fails(generate(mesh.stub, deadline_s=30))
    assert (err.code(), retry_after_of(err)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 2.0)
    assert mesh.sleeps.waits == [] and len(api.requests) == 1


async def test_a_stream_is_retried_before_its_first_token(serve, api):
    mesh = await serve(first_token_timeout_s=0.1)
    api.script(Reply(first_chunk_delay_s=2), Reply("fresh start"))
    chunks = await stream(mesh.stub)
    assert [c.delta for c in chunks[:-1]] == ["fresh", " start"] and chunks[-1].final
    assert len(api.requests) == 2 and len(mesh.sleeps.waits) == 1
    assert (mesh.breaker.failures, mesh.breaker.successes) == (1, 1)


@pytest.mark.parametrize("answer", [Reply("a b c", stall_after=1, stall_s=2),
                                    Reply("a b c", malformed_after=1)])
async def test_no_retry_after_the_first_token(serve, api, answer):
    mesh = await serve(retry={"max_attempts": 3}, stall_timeout_s=0.1)
    api.script(answer, Reply("never asked for"))
    call = mesh.stub.GenerateStream(provider_pb2.GenerateStreamRequest(messages=MESSAGES), timeout=5)
    deltas = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for chunk in call:
            deltas.append(chunk.delta)
    assert err.value.code() == UNAVAILABLE and deltas == ["a"]
    assert len(api.requests) == 1 and mesh.sleeps.waits == []
    assert mesh.breaker.failures == 1


async def test_bad_requests_are_not_retried(serve, api):
    mesh = await serve(retry={"max_attempts": 3})
    api.script(Status(400, {"error": {"message": "no such model", "param": "model"}}))
    err = await fails(generate(mesh.stub))
    assert bad_request_fields(trailing_status(err)) == ["model"]
    assert len(api.requests) == 1 and mesh.sleeps.waits == []


async def test_no_retry_into_a_breaker_its_failure_opened(serve, api):
    mesh = await serve(retry={"max_attempts": 3}, breaker={"failure_threshold": 1})
    api.script(Status(500))
    err = await fails(generate(mesh.stub))
    assert "HTTP 500" in err.details()  # the backend's error, not a refusal
    assert len(api.requests) == 1 and mesh.sleeps.waits == []
    assert "is open" in (await fails(generate(mesh.stub))).details()


# -- ListBackends ---------------------------------------------------------------------------


async def test_list_backends_shows_counters_and_the_breaker(serve, api):
    mesh = await serve(retry={"max_attempts": 1}, max_concurrency=1)
    api.script(Reply("slow", delay_s=0.3), Reply("queued"))
    slow = asyncio.ensure_future(generate(mesh.stub))
    queued = asyncio.ensure_future(generate(mesh.stub))
    await until(lambda: len(api.requests) == 1)
    await until(lambda: mesh.breaker.in_flight == 2)  # both admitted by the breaker, one waits for a slot
    busy = await status_of(mesh.stub)
    assert (busy.in_flight, busy.waiting, busy.max_concurrency) == (1, 1, 1)
    await asyncio.gather(slow, queued)

    api.script(Status(500), Status(500), Status(500))
    for _ in range(3):
        await fails(generate(mesh.stub))
    status = await status_of(mesh.stub)
    assert (status.in_flight, status.waiting, status.calls, status.errors) == (0, 0, 5, 3)
    assert status.last_error.startswith("BackendUnavailable: standin: HTTP 500")
    assert status.latency_ewma_ms > 0 and status.consecutive_failures == 3
    assert status.breaker_state == OPEN and not status.healthy
    assert abs(status.reopen_time.ToNanoseconds() / 1e9 - (time.time() + 5)) < 2

    mesh.clock.advance(5)
    assert (await status_of(mesh.stub)).breaker_state == HALF_OPEN
    mock = await status_of(mesh.stub, "mock")
    assert (mock.breaker_state, mock.max_concurrency, mock.calls, mock.last_error) == (CLOSED, 0, 0, "")
    assert not mock.HasField("reopen_time")


# -- tool calls ----------------------------------------------------------------------------

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [common_pb2.ToolDefinition(name="get_weather", description="Weather of a city",
                                   parameters_json_schema=json.dumps(WEATHER))]
CONVERSATION = [
    common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="weather in Paris?", name="alice@chat"),
    common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, tool_calls=[
        common_pb2.ToolCall(id="call_1", name="get_weather", arguments_json='{"city": "Paris"}')]),
    common_pb2.ChatMessage(role=common_pb2.ROLE_TOOL, content="sunny", name="get_weather",
                           tool_call_id="call_1"),
]


@pytest.mark.parametrize("call", ["generate", "stream"])
async def test_tool_calls_round_trip(serve, api, call):
    mesh = await serve()
    asked = [{"id": "call_2", "name": "get_weather", "arguments": '{"city": "Lyon"}'}]
    api.script(Reply("", tool_calls=asked))
    request = dict(messages=CONVERSATION, tools=TOOLS)
    if call == "generate":
        reply = await mesh.stub.Generate(provider_pb2.GenerateRequest(**request), timeout=5)
        calls, finish = reply.message.tool_calls, reply.finish_reason
    else:
        chunks = [c async for c in mesh.stub.GenerateStream(
            provider_pb2.GenerateStreamRequest(**request), timeout=5)]
        [final] = chunks
        calls, finish = final.tool_calls, final.finish_reason
    assert [(c.id, c.name, c.arguments_json) for c in calls] == [
        ("call_2", "get_weather", '{"city": "Lyon"}')]
    assert finish == common_pb2.FINISH_REASON_TOOL_CALLS

    body = api.requests[0].body
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER}}]
    assert body["messages"] == [
        {"role": "user", "content": "weather in Paris?"},  # a user's name (a channel handle) stays home
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "name": "get_weather", "tool_call_id": "call_1"},
    ]


async def test_mock_tool_script_over_grpc(settings):
    settings.provider = ProviderSettings(port=0, backends={"mock": MockBackendConfig(
        tool_script=[[{"name": "lookup", "arguments": {"q": "x"}}]])})
    server = await build(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await generate(provider_pb2_grpc.ProviderServiceStub(channel))
    finally:
        await server.stop(0)
    [call] = reply.message.tool_calls
    assert (call.id, call.name, json.loads(call.arguments_json)) == ("call_0_0", "lookup", {"q": "x"})


@pytest.mark.parametrize("tool, field", [
    (common_pb2.ToolDefinition(name="", parameters_json_schema="{}"), "tools[0].name"),
    (common_pb2.ToolDefinition(name="t", parameters_json_schema="{not"), "tools[0].parameters_json_schema"),
    (common_pb2.ToolDefinition(name="t", parameters_json_schema="[1]"), "tools[0].parameters_json_schema"),
])
async def test_bad_tools_name_the_field(serve, api, tool, field):
    mesh = await serve()
    err = await fails(generate(mesh.stub, tools=[tool]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(trailing_status(err)) == [field]
    assert api.requests == []
