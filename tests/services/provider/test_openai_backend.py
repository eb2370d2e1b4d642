"""The OpenAI-compatible backend against a real HTTP stand-in (tests/openai_standin.py)."""

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from clawmesh.services.provider.backends import (
    NO_LIMITS,
    BackendUnavailable,
    BadRequest,
    FirstTokenTimeout,
    Generation,
    Limits,
    MalformedResponse,
    OpenAIBackend,
    RateLimited,
    StallTimeout,
    ToolCall,
    ToolSpec,
    TotalTimeout,
    Turn,
    build_backends,
    parse_retry_after,
)
from clawmesh.shared.settings import OpenAIBackendConfig, ProviderSettings, SettingsError
from clawmesh.shared.tokens import estimate_tokens
from tests.conftest import free_port
from tests.openai_standin import Reply, Status

TURNS = [Turn("system", "be brief"), Turn("user", "hi")]
SEEN = 5.0  # generous bound for events the stand-in must see (never reached when things work)


@pytest.fixture
async def make(api):
    built = []

    def make(limits=NO_LIMITS, **kwargs) -> OpenAIBackend:
        backend = OpenAIBackend("standin", api.url, "gpt-test", limits=limits, **kwargs)
        built.append(backend)
        return backend

    yield make
    for backend in built:
        await backend.aclose()


async def call(backend, mode, turns=TURNS, model="", tools=()):
    """(Generation, deltas) of a generate or a fully consumed stream."""
    if mode == "generate":
        return await backend.generate(turns, model, 0, tools), None
    stream = backend.stream(turns, model, 0, tools)
    deltas = [d async for d in stream]
    return stream.result, deltas


async def test_reply_with_usage_on_pooled_connections(api, make):
    api.script(Reply("hello there", usage=(12, 3)))
    backend = make()
    gen = await backend.generate(TURNS, "", 50)
    assert gen == Generation("hello there", "gpt-test", 12, 3, "stop")
    assert api.requests[0].body == {
        "model": "gpt-test", "max_tokens": 50,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }
    await backend.generate(TURNS, "", 0)
    await call(backend, "stream")
    assert [r.connection for r in api.requests] == [1, 1, 1]


async def test_stream_with_usage(api, make):
    api.script(Reply("one two three", usage=(9, 4)))
    gen, deltas = await call(make(), "stream", model="gpt-other")
    assert deltas == ["one", " two", " three"]
    assert gen == Generation("one two three", "gpt-other", 9, 4, "stop")
    body = api.requests[0].body
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})
    assert body["model"] == "gpt-other"


@pytest.mark.parametrize("mode", ["generate", "stream"])
async def test_usage_is_estimated_when_the_server_sends_none(api, make, mode):
    api.script(Reply("four words in here", usage=None))
    gen, _ = await call(make(), mode)
    assert gen.prompt_tokens == estimate_tokens("be brief") + estimate_tokens("hi")
    assert gen.completion_tokens == estimate_tokens("four words in here")


@pytest.mark.parametrize("mode", ["generate", "stream"])
async def test_tool_calls_are_parsed(api, make, mode):
    calls = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"id": "call_2", "name": "get_time", "arguments": "{}"}]
    api.script(Reply("", tool_calls=calls))
    gen, deltas = await call(make(), mode)
    assert gen.tool_calls == [ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                              ToolCall("call_2", "get_time", "{}")]
    assert (gen.content, gen.finish_reason, deltas or []) == ("", "tool_calls", [])


async def test_tools_and_tool_turns_are_sent_in_openai_format(api, make):
    weather = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    turns = [Turn("user", "weather?"), Turn("assistant", "", tool_calls=(weather,)),
             Turn("tool", "sunny", name="get_weather", tool_call_id="call_1")]
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    await make().generate(turns, "", 0, [ToolSpec("get_weather", "Weather of a city", schema)])
    body = api.requests[0].body
    assert body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "name": "get_weather", "tool_call_id": "call_1"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city", "parameters": schema}}]


@pytest.mark.parametrize("mode", ["generate", "stream"])
@pytest.mark.parametrize("answer, error, retry_after_s, is_fault", [
    (Status(429, headers={"Retry-After": "7"}), RateLimited, 7.0, True),
    (Status(429, headers={"retry-after-ms": "1500", "Retry-After": "2"}), RateLimited, 1.5, True),
    (Status(429), RateLimited, None, True),
    (Status(503, headers={"Retry-After": "2"}), BackendUnavailable, 2.0, True),
    (Status(500), BackendUnavailable, None, True),
    (Status(401), BackendUnavailable, None, True),
    (Status(400, {"error": {"message": "too big", "param": "max_tokens"}}), BadRequest, None, False),
    (Status(404, "no such model"), BadRequest, None, False),
])
async def test_http_errors_become_backend_errors(api, make, mode, answer, error, retry_after_s, is_fault):
    api.script(answer)
    backend = make()
    with pytest.raises(error) as caught:
        await call(backend, mode)
    assert type(caught.value) is error
    assert (caught.value.retry_after_s, caught.value.is_fault) == (retry_after_s, is_fault)
    assert str(answer.code) in str(caught.value)
    assert backend.stats.errors == 1 and backend.stats.consecutive_faults == int(is_fault)
    assert backend.stats.in_flight == 0


async def test_bad_request_names_the_servers_param(api, make):
    api.script(Status(400, {"error": {"message": "max_tokens too big", "param": "max_tokens"}}))
    with pytest.raises(BadRequest) as caught:
        await make().generate(TURNS, "", 10**9)
    assert caught.value.field == "max_tokens" and "max_tokens too big" in caught.value.message


def test_retry_after_as_http_date_or_seconds():
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now.timestamp()) == 0
    assert parse_retry_after("2.5") == 2.5
    assert [parse_retry_after(v) for v in ("", None, "soon", "inf", "nan")] == [None] * 5


async def test_a_non_json_body_is_malformed(api, make):
    api.script(Status(200, "<html>proxy says hi</html>"))
    with pytest.raises(MalformedResponse):
        await make().generate(TURNS, "", 0)


async def test_a_malformed_chunk_fails_the_stream_after_the_good_ones(api, make):
    api.script(Reply("a b c", malformed_after=2))
    stream = make().stream(TURNS, "", 0)
    deltas = []
    with pytest.raises(MalformedResponse):
        async for delta in stream:
            deltas.append(delta)
    assert deltas == ["a", " b"]


async def test_connection_refused_is_unavailable():
    backend = OpenAIBackend("nobody", f"http://127.0.0.1:{free_port()}/v1", "m")
    try:
        with pytest.raises(BackendUnavailable, match="ConnectError"):
            await backend.generate(TURNS, "", 0)
    finally:
        await backend.aclose()


@pytest.mark.parametrize("answer", [Reply(first_chunk_delay_s=1.0), Reply(delay_s=1.0)],
                         ids=["after-headers", "before-headers"])
async def test_first_token_timeout_fires_and_closes_the_request(api, make, answer):
    api.script(answer)
    backend = make(Limits(first_token_s=0.2, stall_s=5))
    with pytest.raises(FirstTokenTimeout):
        await call(backend, "stream")
    await asyncio.wait_for(api.requests[0].disconnected.wait(), SEEN)
    assert not api.requests[0].finished.is_set() and backend.stats.in_flight == 0


async def test_stall_timeout_fires_after_the_first_chunks(api, make):
    api.script(Reply("a b c d", stall_after=2, stall_s=1.0))
    stream = make(Limits(first_token_s=5, stall_s=0.2)).stream(TURNS, "", 0)
    deltas = []
    with pytest.raises(StallTimeout):
        async for delta in stream:
            deltas.append(delta)
    assert deltas == ["a", " b"]
    await asyncio.wait_for(api.requests[0].disconnected.wait(), SEEN)


async def test_total_timeout_bounds_a_reply(api, make):
    api.script(Reply(delay_s=1.0))
    with pytest.raises(TotalTimeout):
        await make(Limits(total_s=0.2)).generate(TURNS, "", 0)
    await asyncio.wait_for(api.requests[0].disconnected.wait(), SEEN)


async def test_total_timeout_bounds_a_steady_stream(api, make):
    api.script(Reply("a b c d e f", chunk_delay_s=0.1))
    with pytest.raises(TotalTimeout):
        await call(make(Limits(first_token_s=5, stall_s=5, total_s=0.25)), "stream")


async def test_cancelling_the_consumer_closes_the_http_request(api, make):
    api.script(Reply("a b c", stall_after=1, stall_s=30))
    backend = make()
    got_first = asyncio.Event()

    async def consume():
        async for _ in backend.stream(TURNS, "", 0):
            got_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_first.wait(), SEEN)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(api.requests[0].disconnected.wait(), SEEN)
    assert backend.stats.in_flight == 0 and backend.stats.errors == 0  # a cancellation is no error


async def test_closing_a_stream_early_closes_the_http_request(api, make):
    api.script(Reply("a b c", stall_after=1, stall_s=30))
    stream = make().stream(TURNS, "", 0)
    assert await anext(stream) == "a"
    await stream.aclose()
    await asyncio.wait_for(api.requests[0].disconnected.wait(), SEEN)


async def test_api_key_from_the_named_variable_and_extra_headers(api):
    cfg = ProviderSettings(default_backend="remote", backends={"remote": OpenAIBackendConfig(
        base_url=api.url, model="gpt-test", api_key_env="STANDIN_KEY", headers={"X-Team": "qa"})})
    backends = build_backends(cfg, env={"STANDIN_KEY": "sk-test-123"})
    try:
        await backends["remote"].generate(TURNS, "", 0)
    finally:
        await backends["remote"].aclose()
    headers = api.requests[0].headers
    assert (headers["authorization"], headers["x-team"]) == ("Bearer sk-test-123", "qa")


async def test_no_api_key_env_sends_no_authorization(api, make):
    await make().generate(TURNS, "", 0)
    assert "authorization" not in api.requests[0].headers


def test_a_missing_key_variable_fails_at_build_naming_it():
    cfg = ProviderSettings(default_backend="remote", backends={"remote": OpenAIBackendConfig(
        base_url="https://api.example.com/v1", model="m", api_key_env="EXAMPLE_API_KEY")})
    with pytest.raises(SettingsError, match="EXAMPLE_API_KEY is not set"):
        build_backends(cfg, env={})
    with pytest.raises(SettingsError, match="EXAMPLE_API_KEY"):
        build_backends(cfg, env={"EXAMPLE_API_KEY": ""})
