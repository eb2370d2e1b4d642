"""Every transition of the state machine, on the fake clock, with exact numbers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from clawmesh.shared.breaker import BreakerOpen, State
from clawmesh.shared.errors import Unavailable
from tests.shared.breaker.breaker_helpers import NAME, UNAVAILABLE, finish, settle

CLOSED, OPEN, HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


def tripped(make, **fields):
    """A breaker opened by consecutive failures (threshold 2), 30 s open timeout."""
    fields = {"failure_threshold": 2, "failure_rate_threshold": None, "open_timeout_s": 30.0} | fields
    breaker = make(**fields)
    finish(breaker, UNAVAILABLE, times=2)
    assert breaker.state is OPEN
    return breaker


def half_open(make, clock, **fields):
    breaker = tripped(make, **fields)
    clock.advance(breaker.config.open_timeout_s)
    assert breaker.state is HALF_OPEN
    return breaker


# -- closed -> open ------------------------------------------------------------------------


def test_consecutive_failures_trip_it_and_a_success_resets_the_count(make, changes):
    breaker = make(failure_threshold=3, failure_rate_threshold=None)
    finish(breaker, UNAVAILABLE, times=2)
    finish(breaker)
    finish(breaker, UNAVAILABLE, times=2)
    assert breaker.state is CLOSED and breaker.consecutive_failures == 2
    assert changes == []
    finish(breaker, UNAVAILABLE)
    assert breaker.state is OPEN and breaker.consecutive_failures == 3
    assert changes == [(NAME, CLOSED, OPEN)]


def test_failure_rate_trips_it_only_once_the_window_holds_minimum_calls(make, changes):
    breaker = make(failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=10, window_s=60.0)
    for _ in range(4):
        finish(breaker, UNAVAILABLE)
        finish(breaker)
    finish(breaker, UNAVAILABLE)  # 5 of 9 failed: over the rate, under minimum_calls
    assert breaker.state is CLOSED
    assert breaker.failure_rate == 5 / 9
    finish(breaker, UNAVAILABLE)  # 6 of 10
    assert breaker.state is OPEN and breaker.failure_rate == 0.6
    assert changes == [(NAME, CLOSED, OPEN)]


def test_a_rate_below_the_threshold_at_minimum_calls_does_not_trip(make):
    breaker = make(failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=10)
    finish(breaker, times=6)
    finish(breaker, UNAVAILABLE, times=4)  # 4 of 10
    assert breaker.state is CLOSED and breaker.failure_rate == 0.4
    finish(breaker, UNAVAILABLE)  # 5 of 11
    assert breaker.state is CLOSED
    finish(breaker, UNAVAILABLE)  # 6 of 12 = the threshold exactly: trips
    assert breaker.state is OPEN


def test_the_rate_threshold_is_compared_exactly(make):
    breaker = make(failure_threshold=None, failure_rate_threshold=0.1, minimum_calls=30, window_s=60.0)
    finish(breaker, times=27)
    finish(breaker, UNAVAILABLE, times=2)
    assert breaker.state is CLOSED
    finish(breaker, UNAVAILABLE)  # 3 / 30 == 0.1, though 0.1 * 30 > 3 in floats
    assert breaker.state is OPEN


def test_the_time_window_forgets_calls_after_window_s(make, clock):
    # window 10 s in 1 s slices; the clock starts at 1000.0, a slice boundary
    breaker = make(failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=4, window_s=10.0)
    finish(breaker, UNAVAILABLE, times=3)
    clock.advance(9.5)
    assert breaker.failure_rate == 1.0 and breaker.stats()["window_calls"] == 3
    clock.advance(0.5)  # t = 1010: the slice of t = 1000 has left
    assert breaker.failure_rate == 0.0 and breaker.stats()["window_calls"] == 0
    finish(breaker, UNAVAILABLE)
    assert breaker.state is CLOSED  # 1 call in the window: under minimum_calls


def test_the_time_window_keeps_the_last_ten_slices(make, clock):
    breaker = make(failure_threshold=None, failure_rate_threshold=0.75, minimum_calls=4, window_s=10.0)
    finish(breaker, UNAVAILABLE, times=2)  # slice 1000
    clock.advance(5.0)
    finish(breaker, UNAVAILABLE)  # slice 1005
    finish(breaker)
    clock.advance(5.0)  # t = 1010: the slice of 1000 is gone, 1005 stays
    assert breaker.stats()["window_calls"] == 2 and breaker.failure_rate == 0.5
    finish(breaker, UNAVAILABLE, times=2)  # 3 of 4
    assert breaker.state is OPEN


def test_a_count_window_holds_the_last_window_calls_outcomes(make):
    breaker = make(failure_threshold=None, failure_rate_threshold=0.5, window_calls=4, minimum_calls=4)
    finish(breaker, UNAVAILABLE)
    finish(breaker, times=4)  # the failure has been pushed out
    assert breaker.failure_rate == 0.0 and breaker.stats()["window_calls"] == 4
    finish(breaker, UNAVAILABLE)
    assert breaker.failure_rate == 0.25 and breaker.state is CLOSED
    finish(breaker, UNAVAILABLE)
    assert breaker.state is OPEN


# -- open ----------------------------------------------------------------------------------


def test_open_refuses_with_the_time_left_until_a_probe(make, clock):
    breaker = tripped(make)
    clock.advance(12.0)
    with pytest.raises(BreakerOpen) as refused:
        breaker.acquire()
    exc = refused.value
    assert exc.retry_after_s == 18.0 and breaker.retry_after() == 18.0
    assert exc.name == NAME and exc.state is OPEN
    assert isinstance(exc, Unavailable) and exc.code is grpc.StatusCode.UNAVAILABLE
    status = exc.to_status()
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0] and NAME in status.message
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds == 18
    assert breaker.refused == 1 and breaker.calls == 2


async def test_open_refuses_a_guarded_block_without_running_it(make):
    breaker = tripped(make)
    ran = False
    with pytest.raises(BreakerOpen):
        async with breaker.guard():
            ran = True
    assert not ran and breaker.refused == 1 and breaker.in_flight == 0


def test_open_turns_half_open_exactly_after_open_timeout(make, clock, changes):
    breaker = tripped(make)
    clock.advance(29.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN and breaker.retry_after() == 0.0
    assert changes == [(NAME, CLOSED, OPEN), (NAME, OPEN, HALF_OPEN)]


def test_half_open_is_dated_from_the_timeout_not_from_when_it_is_noticed(make, clock, changes):
    breaker = tripped(make)
    clock.advance(35.0)
    assert breaker.time_in_current_state == 5.0
    assert breaker.state is HALF_OPEN and changes[-1] == (NAME, OPEN, HALF_OPEN)


# -- half-open -----------------------------------------------------------------------------


async def test_exactly_one_of_20_concurrent_callers_is_the_probe(make, clock):
    breaker = half_open(make, clock, success_threshold=1)
    hold = asyncio.Event()
    entered = 0

    async def caller():
        nonlocal entered
        async with breaker.guard() as token:
            entered += 1
            assert token.probe
            await hold.wait()

    tasks = [asyncio.create_task(caller()) for _ in range(20)]
    await settle(1)  # one loop turn, no time: the refusals do not wait
    refused = [t for t in tasks if t.done()]
    assert entered == 1 and len(refused) == 19 and breaker.in_flight == 1
    for task in refused:
        exc = task.exception()
        assert isinstance(exc, BreakerOpen) and exc.state is HALF_OPEN and exc.retry_after_s == 30.0
    assert breaker.refused == 19 and breaker.state is HALF_OPEN
    hold.set()
    await asyncio.gather(*(t for t in tasks if not t.done()))
    assert breaker.state is CLOSED and breaker.in_flight == 0


def test_success_threshold_probes_one_after_another_close_it(make, clock, changes):
    breaker = half_open(make, clock, success_threshold=3)
    for i in range(3):
        probe = breaker.acquire()
        assert probe.probe
        with pytest.raises(BreakerOpen):  # the probe is out: nobody else
            breaker.acquire()
        clock.advance(1.0)
        probe.record_success()
        assert breaker.state is (CLOSED if i == 2 else HALF_OPEN)
    assert changes == [(NAME, CLOSED, OPEN), (NAME, OPEN, HALF_OPEN), (NAME, HALF_OPEN, CLOSED)]
    assert breaker.consecutive_failures == 0 and breaker.failure_rate == 0.0
    assert breaker.time_in_current_state == 0.0
    assert not breaker.acquire().probe  # closed: everyone goes


def test_a_probe_failure_reopens_it_with_a_fresh_timeout(make, clock, changes):
    breaker = half_open(make, clock, success_threshold=2)
    breaker.acquire().record_success()  # one of two
    clock.advance(7.0)
    breaker.acquire().record_exception(UNAVAILABLE)
    assert breaker.state is OPEN and breaker.time_in_current_state == 0.0
    with pytest.raises(BreakerOpen) as refused:
        breaker.acquire()
    assert refused.value.retry_after_s == 30.0
    clock.advance(30.0)
    assert breaker.state is HALF_OPEN
    breaker.acquire().record_success()  # the count of successes started again
    assert breaker.state is HALF_OPEN
    assert changes[2:] == [(NAME, HALF_OPEN, OPEN), (NAME, OPEN, HALF_OPEN)]


def test_calls_admitted_before_the_trip_do_not_decide_half_open(make, clock):
    breaker = make(failure_threshold=2, failure_rate_threshold=None, open_timeout_s=30.0)
    late = [breaker.acquire() for _ in range(3)]
    finish(breaker, UNAVAILABLE, times=2)
    clock.advance(30.0)
    probe = breaker.acquire()
    late[0].record_failure()
    late[1].record_success()
    late[2].release()
    assert breaker.state is HALF_OPEN and breaker.consecutive_failures == 2
    with pytest.raises(BreakerOpen):  # the probe is still the probe
        breaker.acquire()
    probe.record_success()
    assert breaker.state is HALF_OPEN  # success_threshold is 2
    stats = breaker.stats()
    assert (stats["calls"], stats["successes"], stats["failures"], stats["ignored"]) == (6, 2, 3, 1)
