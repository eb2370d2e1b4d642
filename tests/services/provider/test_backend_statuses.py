"""Backend failures through a real grpc.aio provider server: statuses, RetryInfo, cancellation."""

import asyncio

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.shared.errors import bad_request_fields, retry_after_of
from clawmesh.shared.settings import MockBackendConfig, OpenAIBackendConfig, ProviderSettings
from tests.conftest import trailing_status
from tests.inproc import inproc_mesh
from tests.openai_standin import Reply, Status

MESSAGES = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]


@pytest.fixture
async def provider(settings, api):
    settings.provider = ProviderSettings(port=0, default_backend="standin", backends={
        # One attempt: these tests map each backend error to a status (retries: test_resilience.py).
        "standin": OpenAIBackendConfig(base_url=api.url, model="gpt-test", first_token_timeout_s=0.2,
                                       retry={"max_attempts": 1}),
        "mock": MockBackendConfig(),
    })
    async with inproc_mesh(settings, services=("provider",)) as servers:
        async with grpc.aio.insecure_channel(servers["provider"].address) as channel:
            yield provider_pb2_grpc.ProviderServiceStub(channel)


async def stream_all(provider, **kwargs):
    request = provider_pb2.GenerateStreamRequest(messages=MESSAGES, **kwargs)
    return [c async for c in provider.GenerateStream(request, timeout=5)]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("answer, code, retry_s", [
    (Status(429, headers={"Retry-After": "7"}), grpc.StatusCode.RESOURCE_EXHAUSTED, 7.0),
    (Status(503, headers={"Retry-After": "2"}), grpc.StatusCode.UNAVAILABLE, 2.0),
    (Status(500), grpc.StatusCode.UNAVAILABLE, None),
    (Reply("a b", malformed_after=1), grpc.StatusCode.UNAVAILABLE, None),
    (Status(400, {"error": {"message": "too long", "param": "messages"}}),
     grpc.StatusCode.INVALID_ARGUMENT, None),
])
async def test_backend_errors_become_statuses(provider, api, streamed, answer, code, retry_s):
    if not streamed and isinstance(answer, Reply):
        answer = Status(200, "not json")
    api.script(answer)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if streamed:
            await stream_all(provider)
        else:
            await provider.Generate(provider_pb2.GenerateRequest(messages=MESSAGES), timeout=5)
    assert err.value.code() == code
    assert retry_after_of(err.value) == retry_s
    assert "standin" in err.value.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert bad_request_fields(trailing_status(err.value)) == ["messages"]


async def test_first_token_timeout_is_unavailable(provider, api):
    api.script(Reply(first_chunk_delay_s=1.0))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream_all(provider)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "first token" in err.value.details()
    await asyncio.wait_for(api.requests[0].disconnected.wait(), 5)


async def test_stream_carries_the_servers_usage_and_finish(provider, api):
    api.script(Reply("one two three", usage=(21, 9)))
    chunks = await stream_all(provider)
    assert "".join(c.delta for c in chunks) == "one two three"
    final = chunks[-1]
    assert final.final and (final.backend, final.model) == ("standin", "gpt-test")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (21, 9, 30)
    assert final.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_cancelling_the_grpc_stream_closes_the_http_request(provider, api):
    api.script(Reply("a b c", stall_after=1, stall_s=30))
    call = provider.GenerateStream(provider_pb2.GenerateStreamRequest(messages=MESSAGES), timeout=10)
    first = await anext(aiter(call))
    assert first.delta == "a"
    call.cancel()
    await asyncio.wait_for(api.requests[0].disconnected.wait(), 5)


async def test_list_backends_reports_health_and_failures(provider, api):
    api.script(Status(500))
    with pytest.raises(grpc.aio.AioRpcError):
        await provider.Generate(provider_pb2.GenerateRequest(messages=MESSAGES), timeout=5)
    reply = await provider.ListBackends(provider_pb2.ListBackendsRequest(), timeout=5)
    status = {b.name: b for b in reply.backends}
    assert (status["standin"].kind, status["standin"].is_default, status["standin"].consecutive_failures) == (
        "openai", True, 1)
    assert status["standin"].healthy and list(status["standin"].models) == ["gpt-test"]
    mock = status["mock"]
    assert (mock.kind, mock.is_default, mock.consecutive_failures) == ("mock", False, 0)
