import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.provider.v1 import provider_pb2, provider_pb2_grpc
from clawmesh.services.provider.backends import MockBackend, Turn
from clawmesh.shared.errors import bad_request_fields
from tests.conftest import trailing_status
from tests.inproc import inproc_mesh

USER, ASSISTANT = common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT


def msg(role, text):
    return common_pb2.ChatMessage(role=role, content=text)


def test_mock_reply_shows_the_history_it_saw():
    mock = MockBackend()
    first = mock.reply_text([Turn("user", "hi")])
    assert first == 'mock reply 1: you said "hi"; 0 earlier turn(s)'
    third = mock.reply_text(
        [Turn("user", "a"), Turn("assistant", "x"), Turn("user", "b"), Turn("assistant", "y"),
         Turn("user", "c")]
    )
    assert third == 'mock reply 3: you said "c"; 2 earlier turn(s), previously "b"'


@pytest.fixture
async def provider(settings):
    async with inproc_mesh(settings, services=("provider",)) as servers:
        async with grpc.aio.insecure_channel(servers["provider"].address) as channel:
            yield provider_pb2_grpc.ProviderServiceStub(channel)


async def test_generate_and_stream_agree(provider):
    messages = [msg(USER, "one"), msg(ASSISTANT, "r"), msg(USER, "two")]
    gen = await provider.Generate(provider_pb2.GenerateRequest(messages=messages), timeout=5)
    assert gen.backend == "mock" and gen.model == "mock-1"
    assert gen.message.content == 'mock reply 2: you said "two"; 1 earlier turn(s), previously "one"'
    assert gen.usage.total_tokens == gen.usage.prompt_tokens + gen.usage.completion_tokens > 0
    chunks = [c async for c in provider.GenerateStream(
        provider_pb2.GenerateStreamRequest(messages=messages), timeout=5)]
    assert len(chunks) > 2 and chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks) == gen.message.content


@pytest.mark.parametrize(
    "request_kwargs, field",
    [
        ({"messages": []}, "messages"),
        ({"messages": [msg(USER, "x")], "backend": "gpt-nope"}, "backend"),
        ({"messages": [msg(USER, "x"), msg(0, "y")]}, "messages[1].role"),
        ({"messages": [msg(USER, "x"), msg(42, "y")]}, "messages[1].role"),
    ],
)
async def test_bad_input_names_the_field(provider, request_kwargs, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await provider.Generate(provider_pb2.GenerateRequest(**request_kwargs), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(trailing_status(err.value)) == [field]


async def test_list_backends(provider):
    reply = await provider.ListBackends(provider_pb2.ListBackendsRequest(), timeout=5)
    [backend] = reply.backends
    assert (backend.name, backend.kind, backend.is_default, backend.healthy) == ("mock", "mock", True, True)
    assert backend.breaker_state == provider_pb2.BREAKER_STATE_CLOSED
