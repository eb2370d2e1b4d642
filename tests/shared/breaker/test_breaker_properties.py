"""Random interleavings of calls, their outcomes, cancellations and time passing: in
half-open at most one call is ever in flight, a free probe slot is never withheld,
and the counters and transitions stay consistent. A fresh loop per example."""

from __future__ import annotations

import asyncio

import grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clawmesh.shared.breaker import BreakerConfig, CircuitBreaker, State
from clawmesh.shared.errors import InvalidArgument
from tests.fakes import FakeClock
from tests.shared.breaker.breaker_helpers import UNAVAILABLE, rpc_error, settle

RAISES = {"unavailable": UNAVAILABLE, "invalid": InvalidArgument("f", "bad"),
          "cancelled_rpc": rpc_error(grpc.StatusCode.CANCELLED), "bug": RuntimeError("bug")}
OUTCOMES = ["ok", "record_failure", *RAISES]
EDGES = {(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.OPEN),
         (State.HALF_OPEN, State.CLOSED)}

ops = st.lists(
    st.one_of(
        st.tuples(st.just("call")),
        st.tuples(st.just("call")),
        st.tuples(st.just("end"), st.integers(0, 20), st.sampled_from(OUTCOMES)),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("tick"), st.sampled_from([0.5, 2.0, 5.0, 12.0])),
    ),
    min_size=1,
    max_size=60,
)


async def scenario(operations, success_threshold: int, count_window: bool) -> None:
    clock = FakeClock(0.0)
    config = BreakerConfig(failure_threshold=3, failure_rate_threshold=0.5, minimum_calls=3, window_s=10.0,
                           window_calls=4 if count_window else None, open_timeout_s=5.0,
                           success_threshold=success_threshold)
    changes: list[tuple[State, State]] = []
    breaker = CircuitBreaker("p", config, clock=clock,
                             on_state_change=[lambda _, old, new: changes.append((old, new))])
    inside = probes_inside = 0
    calls: list[tuple[asyncio.Task, asyncio.Event, list[str]]] = []

    async def call(event: asyncio.Event, outcome: list[str]) -> None:
        nonlocal inside, probes_inside
        async with breaker.guard() as token:
            assert breaker.state is (State.HALF_OPEN if token.probe else State.CLOSED)
            assert probes_inside == 0 or not token.probe, "a second probe was admitted"
            inside += 1
            probes_inside += token.probe
            try:
                await event.wait()
                if outcome[0] == "record_failure":
                    token.record_failure()
                elif outcome[0] in RAISES:
                    raise RAISES[outcome[0]]
            finally:
                inside -= 1
                probes_inside -= token.probe

    def check() -> None:
        assert probes_inside <= 1
        assert breaker.in_flight == inside
        assert breaker.calls == breaker.successes + breaker.failures + breaker.ignored + breaker.in_flight
        state = breaker.state
        if state is State.HALF_OPEN:
            assert (breaker.retry_after() == 0.0) == (probes_inside == 0)  # a free slot is never held
        elif state is State.OPEN:
            assert 0.0 < breaker.retry_after() <= config.open_timeout_s
        else:
            assert probes_inside == 0 and breaker.retry_after() == 0.0
        assert all(change in EDGES for change in changes)
        assert all(a[1] == b[0] for a, b in zip(changes, changes[1:], strict=False))

    try:
        for op in operations:
            if op[0] == "call":
                event, outcome = asyncio.Event(), ["ok"]
                calls.append((asyncio.create_task(call(event, outcome)), event, outcome))
            elif op[0] == "end" and calls:
                _, event, outcome = calls[op[1] % len(calls)]
                outcome[0] = op[2]
                event.set()
            elif op[0] == "cancel" and calls:
                calls[op[1] % len(calls)][0].cancel()
            elif op[0] == "tick":
                clock.advance(op[1])
            await settle()
            check()
    finally:
        for _, event, _ in calls:
            event.set()
        await asyncio.gather(*(task for task, _, _ in calls), return_exceptions=True)
    assert breaker.in_flight == 0 and inside == 0
    assert breaker.calls + breaker.refused == len(calls)


# Half-open, the probe is cancelled while two more callers arrive: one of them probes.
_CANCELLED_PROBE = [("call",)] * 3 + [("end", i, "unavailable") for i in range(3)] + [
    ("tick", 5.0), ("call",), ("call",), ("cancel", 3), ("call",), ("call",)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(operations=_CANCELLED_PROBE, success_threshold=2, count_window=False)
@given(operations=ops, success_threshold=st.integers(1, 3), count_window=st.booleans())
def test_half_open_never_has_more_than_one_call_in_flight(operations, success_threshold, count_window):
    asyncio.run(scenario(operations, success_threshold, count_window))
