"""The mock backend: unchanged reply, seeded latency and faults, scripted tool calls, the concurrency cap."""

import asyncio
import random

import pytest

from clawmesh.services.provider.backends import (
    BackendUnavailable,
    FirstTokenTimeout,
    Limits,
    MalformedResponse,
    MockBackend,
    RateLimited,
    StallTimeout,
    ToolCall,
    Turn,
)
from clawmesh.shared.settings import (
    ErrorFault,
    MalformedFault,
    MockBackendConfig,
    RateLimitFault,
    SlowFirstTokenFault,
    StallFault,
)

HI = [Turn("user", "hi")]


class Sleeps:
    """An injected sleep that records its delays and returns at once."""

    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


async def consume(stream):
    deltas = []
    async for delta in stream:
        deltas.append(delta)
    return deltas


async def test_reply_and_chunks_are_unchanged():
    mock = MockBackend()
    gen = await mock.generate(HI, "", 0)
    assert gen.content == 'mock reply 1: you said "hi"; 0 earlier turn(s)'
    assert (gen.model, gen.finish_reason, gen.tool_calls) == ("mock-1", "stop", [])
    stream = mock.stream(HI, "", 0)
    assert await consume(stream) == ["mock reply 1:", ' you said "hi";', " 0 earlier turn(s)"]
    assert stream.result == gen


async def outcomes(backend, n=40):
    out = []
    for i in range(n):
        try:
            await backend.generate([Turn("user", str(i))], "", 0)
            out.append("ok")
        except RateLimited as exc:
            out.append(f"429:{exc.retry_after_s:g}")
        except BackendUnavailable:
            out.append("503")
    return out


async def test_faults_are_deterministic_with_a_seed():
    faults = [ErrorFault(rate=0.3), RateLimitFault(rate=0.2, retry_after_s=3)]
    first = await outcomes(MockBackend(seed=42, faults=faults))
    assert first == await outcomes(MockBackend(seed=42, faults=faults))
    assert first == await outcomes(MockBackend(rng=random.Random(42), faults=faults))
    assert {"ok", "503", "429:3"} == set(first)
    assert first != await outcomes(MockBackend(seed=7, faults=faults))


async def test_latency_and_jitter_come_from_the_seeded_rng():
    runs = []
    for _ in range(2):
        sleeps = Sleeps()
        mock = MockBackend(latency_s=0.1, jitter_s=0.05, seed=3, sleep=sleeps)
        for _ in range(5):
            await mock.generate(HI, "", 0)
        runs.append(sleeps.delays)
    assert runs[0] == runs[1] and len(set(runs[0])) == 5
    assert all(0.1 <= d < 0.15 for d in runs[0])


async def test_chunk_delay_sets_the_streaming_rate():
    sleeps = Sleeps()
    await consume(MockBackend(chunk_delay_s=0.02, sleep=sleeps).stream(HI, "", 0))
    assert sleeps.delays == [0.02, 0.02]  # between three chunks


async def test_slow_first_token_trips_the_first_token_timeout():
    mock = MockBackend(faults=[SlowFirstTokenFault(delay_s=1.0)], limits=Limits(first_token_s=0.2))
    with pytest.raises(FirstTokenTimeout):
        await consume(mock.stream(HI, "", 0))
    sleeps = Sleeps()
    await MockBackend(faults=[SlowFirstTokenFault(delay_s=1.0)], sleep=sleeps).generate(HI, "", 0)
    assert sleeps.delays == [1.0]


async def test_a_stall_after_k_chunks_trips_the_stall_timeout():
    mock = MockBackend(faults=[StallFault(after_chunks=2, delay_s=1.0)], limits=Limits(stall_s=0.2))
    stream, deltas = mock.stream(HI, "", 0), []
    with pytest.raises(StallTimeout):
        async for delta in stream:
            deltas.append(delta)
    assert deltas == ["mock reply 1:", ' you said "hi";']
    assert mock.stats.consecutive_faults == 1


async def test_a_malformed_chunk_after_k_chunks():
    mock = MockBackend(faults=[MalformedFault(after_chunks=1)])
    stream, deltas = mock.stream(HI, "", 0), []
    with pytest.raises(MalformedResponse):
        async for delta in stream:
            deltas.append(delta)
    assert deltas == ["mock reply 1:"]
    with pytest.raises(MalformedResponse):
        await mock.generate(HI, "", 0)


async def test_scripted_tool_calls_then_the_answer():
    mock = MockBackend.from_config("agent", MockBackendConfig(tool_script=[
        [{"name": "lookup", "arguments": {"q": "paris"}}],
        [{"name": "clock", "id": "t-1"}, {"name": "units", "arguments": '{"to": "C"}'}],
    ]))
    first = await mock.generate(HI, "", 0)
    assert (first.content, first.finish_reason) == ("", "tool_calls")
    assert first.tool_calls == [ToolCall("call_0_0", "lookup", '{"q": "paris"}')]
    turns = [*HI, Turn("assistant", "", tool_calls=tuple(first.tool_calls)),
             Turn("tool", "sunny", tool_call_id="call_0_0")]
    stream = mock.stream(turns, "", 0)
    assert await consume(stream) == []
    assert stream.result.tool_calls == [
        ToolCall("t-1", "clock", "{}"), ToolCall("call_1_1", "units", '{"to": "C"}')]
    turns += [Turn("assistant", "", tool_calls=tuple(stream.result.tool_calls)), Turn("tool", "12:00"),
              Turn("tool", "20 C")]
    final = await mock.generate(turns, "", 0)
    assert final.tool_calls == []
    assert final.content == 'mock reply 2: you said "20 C"; 1 earlier turn(s), previously "hi"'
    again = await mock.generate([*turns, Turn("assistant", final.content), Turn("user", "and now?")], "", 0)
    assert again.tool_calls == first.tool_calls  # a new user message starts the script over


async def test_concurrency_cap_makes_the_extra_call_wait():
    entered, release, two_in = [], asyncio.Event(), asyncio.Event()

    async def gate(seconds):
        entered.append(seconds)
        if len(entered) == 2:
            two_in.set()
        await release.wait()

    mock = MockBackend(latency_s=1.0, sleep=gate, limits=Limits(max_concurrency=2))
    calls = [asyncio.create_task(mock.generate([Turn("user", str(i))], "", 0)) for i in range(3)]
    await two_in.wait()
    assert (mock.stats.in_flight, mock.stats.waiting, len(entered)) == (2, 1, 2)
    assert not any(c.done() for c in calls)
    release.set()
    replies = await asyncio.gather(*calls)
    assert [r.content.split('"')[1] for r in replies] == ["0", "1", "2"]
    assert (mock.stats.in_flight, mock.stats.waiting, mock.stats.calls, len(entered)) == (0, 0, 3, 3)


async def test_a_stream_holds_its_slot_until_closed():
    mock = MockBackend(limits=Limits(max_concurrency=1))
    stream = mock.stream(HI, "", 0)
    await anext(stream)
    waiting = asyncio.create_task(mock.generate(HI, "", 0))
    await asyncio.sleep(0)  # let it reach the semaphore
    assert (mock.stats.in_flight, mock.stats.waiting) == (1, 1)
    await stream.aclose()
    await waiting
    assert (mock.stats.in_flight, mock.stats.waiting, mock.stats.calls) == (0, 0, 1)  # closing early: no call


async def test_health_and_latency_follow_the_outcomes():
    mock = MockBackend(faults=[ErrorFault()])
    for expected_healthy in (True, True, False):
        with pytest.raises(BackendUnavailable):
            await mock.generate(HI, "", 0)
        assert mock.info.healthy is expected_healthy
    assert (mock.stats.errors, mock.stats.consecutive_faults) == (3, 3)
    assert mock.stats.last_error.startswith("BackendUnavailable: mock: injected error")
    mock.faults = []
    await mock.generate(HI, "", 0)
    assert mock.info.healthy and mock.stats.consecutive_faults == 0 and mock.stats.latency_ms > 0
