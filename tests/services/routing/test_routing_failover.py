"""Failover along a route's chain through real servers: routing → provider (openai backends) → stand-ins.

Backend ``a`` is first, ``b`` the fallback; each stand-in is scripted with what its backend does.
"""

import asyncio
import time

import grpc
import pytest

from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.prompt import CONTINUE
from clawmesh.shared.errors import retry_after_of
from tests.openai_standin import Reply, Status
from tests.services.routing.conftest import TENANT, inbound, openai, routing_mesh

RULES = """
routes:
  - name: chat
    primary: [{backend: a}]
    fallbacks: [{backend: b}]
    first_token_timeout_s: 0.5
    attempt_timeout_s: 1
health: {cooldown_s: 0.001}
"""


@pytest.fixture
async def mesh(settings, tmp_path, api_a, api_b):
    async with routing_mesh(settings, tmp_path, RULES, {"a": openai(api_a), "b": openai(api_b)}) as mesh:
        yield mesh


def text_of(responses) -> str:
    return "".join(r.chunk.delta for r in responses if not r.chunk.final)


def failovers_of(responses) -> list[routing_pb2.Failover]:
    return [f for r in responses for f in r.failovers]


@pytest.mark.parametrize("answer, code, message", [
    (Status(429, headers={"Retry-After": "7"}), "RESOURCE_EXHAUSTED", "429"),
    (Status(500), "UNAVAILABLE", "500"),
    (Reply(delay_s=5), "DEADLINE_EXCEEDED", "no reply within 1s"),
    (Status(200, "not json"), "UNAVAILABLE", ""),
])
async def test_a_reply_that_fails_is_answered_by_the_next_backend(mesh, api_a, api_b, answer, code, message):
    api_a.script(answer)
    api_b.script(Reply("from b"))
    response = await mesh.dispatch("hello")
    assert (response.reply.content, response.reply.backend) == ("from b", "b")
    [failover] = response.failovers
    assert (failover.from_backend, failover.to_backend, failover.code) == ("a", "b", code)
    assert message in failover.message and not failover.continued
    assert [m.content for m in await mesh.history()] == ["hello", "from b"]


@pytest.mark.parametrize("answer, code, message", [
    (Status(429, headers={"Retry-After": "7"}), "RESOURCE_EXHAUSTED", "429"),
    (Status(500), "UNAVAILABLE", "500"),
    (Reply("never sent", first_chunk_delay_s=5), "DEADLINE_EXCEEDED", "no first token within 0.5s"),
    (Reply("x y", malformed_after=0), "UNAVAILABLE", "malformed"),
])
async def test_a_stream_failing_before_its_first_token_goes_to_the_next_backend(
        mesh, api_a, api_b, answer, code, message):
    api_a.script(answer)
    api_b.script(Reply("from b"))
    responses = await mesh.stream("hello")
    assert text_of(responses) == "from b" == responses[-1].chunk.reply.content
    assert responses[0].route.backend == "a" and responses[-1].chunk.reply.backend == "b"
    [failover] = responses[0].failovers  # marked on the first response: nothing was sent before
    assert (failover.from_backend, failover.to_backend, failover.code) == ("a", "b", code)
    assert message in failover.message.lower() and failover.after_chars == 0
    if code == "DEADLINE_EXCEEDED":  # the abandoned HTTP request was closed, not left running
        await asyncio.wait_for(api_a.requests[0].disconnected.wait(), 5)


@pytest.mark.parametrize("failing", [
    Reply("alpha beta gamma epsilon", stall_after=3, stall_s=5),  # the provider's stall timeout (0.3 s)
    Reply("alpha beta gamma epsilon", malformed_after=3),
])
@pytest.mark.parametrize("continuation", [
    "alpha beta gamma delta",  # a model that starts over
    " delta",  # one that continues
    " beta gamma delta",  # one that repeats its last words
])
async def test_a_stream_failing_mid_reply_is_continued_without_repeating_text(
        mesh, api_a, api_b, failing, continuation):
    api_a.script(failing)
    api_b.script(Reply(continuation))
    responses = await mesh.stream("tell me")
    expected = "alpha beta gamma delta"
    assert text_of(responses) == expected == responses[-1].chunk.reply.content
    switched = [r for r in responses if r.failovers]
    assert len(switched) == 1 and switched[0].chunk.delta == " delta"  # marked on the next response
    [failover] = switched[0].failovers
    assert (failover.from_backend, failover.to_backend, failover.after_chars, failover.continued) == (
        "a", "b", len("alpha beta gamma"), True)
    sent = api_b.requests[0].body["messages"]  # the partial answer as context, then the instruction
    assert sent[-2] == {"role": "assistant", "content": "alpha beta gamma"}
    assert sent[-1] == {"role": "user", "content": CONTINUE}
    assert [r.chunk.index for r in responses] == list(range(len(responses)))
    assert [m.content for m in await mesh.history()] == ["tell me", expected]


async def test_an_open_breaker_is_passed_at_once_and_set_aside_for_its_retry_time(
        settings, tmp_path, api_a, api_b):
    breaker = {"failure_threshold": 1, "open_timeout_s": 30}
    backends = {"a": openai(api_a, breaker=breaker), "b": openai(api_b)}
    async with routing_mesh(settings, tmp_path, RULES, backends) as mesh:
        api_a.script(Status(500))  # opens a's breaker in the provider
        assert (await mesh.dispatch("one")).reply.backend == "b"
        started = time.monotonic()
        # Another session (the first one's affinity now holds it on b). Routing's cooldown is
        # over, so a is tried first again; the provider's open breaker refuses at once.
        response = await mesh.dispatch("two", session="s2")
        assert response.reply.backend == "b" and time.monotonic() - started < 1
        [failover] = response.failovers
        assert failover.code == "UNAVAILABLE" and "circuit breaker" in failover.message
        assert len(api_a.requests) == 1  # the breaker kept the second call from the backend
        route = await mesh.explain("three")  # now a goes last until the breaker's probe time
        assert [t.backend for t in route.targets] == ["b", "a"]
        assert not route.targets[1].available and 25 < route.targets[1].retry_in_s <= 30
        assert "set aside" in route.targets[1].note and "set aside" in route.reason


async def test_when_every_backend_fails_the_answer_is_unavailable_with_retry_info(
        settings, tmp_path, api_a, api_b):
    rules = RULES.replace("cooldown_s: 0.001", "cooldown_s: 2")
    async with routing_mesh(settings, tmp_path, rules, {"a": openai(api_a), "b": openai(api_b)}) as mesh:
        for streamed in (False, True):
            api_a.script(Status(500))
            api_b.script(Status(503, headers={"Retry-After": "3"}))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await (mesh.stream("hi") if streamed else mesh.dispatch("hi"))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "every target failed" in err.value.details()
            assert "a: UNAVAILABLE" in err.value.details() and "b: UNAVAILABLE" in err.value.details()
            assert 1 < retry_after_of(err.value) <= 2  # the soonest retry: a's cooldown
        assert await mesh.history() == []


async def test_a_bad_request_is_not_failed_over(mesh, api_a, api_b):
    api_a.script(Status(400, {"error": {"message": "too long", "param": "messages"}}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.dispatch("hello")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and api_b.requests == []


async def test_chunks_arrive_as_the_backend_sends_them(mesh, api_a):
    api_a.script(Reply("one two three four five", chunk_delay_s=0.15))
    request = routing_pb2.DispatchStreamRequest(message=inbound("count"))
    arrivals = []
    async for response in mesh.routing.DispatchStream(request, metadata=TENANT, timeout=10):
        arrivals.append((time.monotonic(), response.chunk.delta))
    deltas = [t for t, delta in arrivals if delta]
    gaps = [b - a for a, b in zip(deltas, deltas[1:], strict=False)]
    assert len(deltas) == 5 and min(gaps) > 0.08, gaps  # not buffered into one burst
    assert arrivals[-1][0] - deltas[0] > 0.45


async def test_a_cancelled_stream_ends_the_backend_request_and_stores_nothing(
        settings, tmp_path, api_a, api_b):
    backends = {"a": openai(api_a, stall_timeout_s=60), "b": openai(api_b)}
    async with routing_mesh(settings, tmp_path, RULES, backends) as mesh:
        api_a.script(Reply("first then nothing", stall_after=1, stall_s=30))
        call = mesh.routing.DispatchStream(routing_pb2.DispatchStreamRequest(message=inbound("go")),
                                           metadata=TENANT, timeout=10)
        first = await anext(aiter(call))
        assert first.chunk.delta == "first"
        call.cancel()
        await asyncio.wait_for(api_a.requests[0].disconnected.wait(), 5)
        assert api_b.requests == [] and await mesh.history() == []


async def test_without_rules_one_backend_is_the_chain(settings, tmp_path, api_a):
    settings.routing.default_backend = "a"
    async with routing_mesh(settings, tmp_path, None, {"a": openai(api_a)}) as mesh:
        api_a.script(Status(429, headers={"Retry-After": "4"}))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mesh.dispatch("hi")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and 3 < retry_after_of(err.value) <= 4
        assert "429" in err.value.details()
        assert (await mesh.dispatch("again")).reply.content == "hello from the stand-in"
