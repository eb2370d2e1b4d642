"""What counts: the classifier, cancellation, RESOURCE_EXHAUSTED, the guard and tokens."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest

from clawmesh.shared.breaker import BreakerOpen, CircuitBreaker, Outcome, State, grpc_classifier
from clawmesh.shared.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from tests.shared.breaker.breaker_helpers import NAME, UNAVAILABLE, finish, rpc_error, settle

Code = grpc.StatusCode
F, S, N = Outcome.FAILURE, Outcome.SUCCESS, Outcome.IGNORED  # N: neither


def half_open(make, clock, **fields):
    fields = {"failure_threshold": 1, "failure_rate_threshold": None, "open_timeout_s": 10.0,
              "success_threshold": 1} | fields
    breaker = make(**fields)
    finish(breaker, UNAVAILABLE)
    clock.advance(10.0)
    assert breaker.state is State.HALF_OPEN
    return breaker


@pytest.mark.parametrize(("code", "outcome"), [
    (Code.UNAVAILABLE, F), (Code.DEADLINE_EXCEEDED, F), (Code.INTERNAL, F), (Code.UNKNOWN, F),
    (Code.RESOURCE_EXHAUSTED, S), (Code.CANCELLED, N),
    (Code.INVALID_ARGUMENT, S), (Code.NOT_FOUND, S), (Code.ALREADY_EXISTS, S),
    (Code.PERMISSION_DENIED, S), (Code.UNAUTHENTICATED, S), (Code.FAILED_PRECONDITION, S),
    (Code.ABORTED, S), (Code.OUT_OF_RANGE, S), (Code.UNIMPLEMENTED, S), (Code.DATA_LOSS, S),
])
def test_the_default_classifier_by_status_code(code, outcome):
    classify = grpc_classifier()
    assert classify(rpc_error(code)) is outcome
    error = Unavailable("x")
    error.code = code  # a ClawMeshError (e.g. errors.Downstream) with this status
    assert classify(error) is outcome


@pytest.mark.parametrize("exc", [RuntimeError("bug"), TimeoutError(), ConnectionResetError(), OSError()])
def test_exceptions_without_a_status_are_failures(exc):
    assert grpc_classifier()(exc) is F


def test_domain_errors_are_classified_by_their_status():
    classify = grpc_classifier()
    assert classify(InvalidArgument("field", "bad")) is S
    assert classify(NotFound("no such session")) is S
    assert classify(ResourceExhausted("slow down", 1.0)) is S
    assert classify(BreakerOpen("other", 1.0, State.OPEN)) is F  # a deeper breaker is open
    assert grpc_classifier(count_resource_exhausted=True)(ResourceExhausted("slow down")) is F


def test_answers_of_the_server_never_trip_it(make):
    breaker = make(failure_threshold=1, failure_rate_threshold=None)
    for exc in (rpc_error(Code.INVALID_ARGUMENT), InvalidArgument("f", "bad"), NotFound("x"),
                rpc_error(Code.NOT_FOUND), rpc_error(Code.CANCELLED)):
        finish(breaker, exc, times=3)
    assert breaker.state is State.CLOSED and breaker.stats()["failures"] == 0
    assert (breaker.successes, breaker.ignored) == (12, 3)


async def test_cancellation_never_trips_it(make):
    breaker = make(failure_threshold=1, failure_rate_threshold=1.0, minimum_calls=1)

    async def hang():
        async with breaker.guard():
            await asyncio.Event().wait()

    for _ in range(5):
        task = asyncio.create_task(hang())
        await settle(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert breaker.state is State.CLOSED
    assert (breaker.ignored, breaker.failures, breaker.consecutive_failures) == (5, 0, 0)
    assert breaker.stats()["window_calls"] == 0 and breaker.in_flight == 0


async def test_a_cancelled_probe_frees_the_slot_and_changes_nothing(make, clock, changes):
    breaker = half_open(make, clock)

    async def probe():
        async with breaker.guard() as token:
            assert token.probe
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await settle(1)
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is State.HALF_OPEN and len(changes) == 2
    token = breaker.acquire()  # the next probe goes at once
    assert token.probe
    token.record_exception(rpc_error(Code.CANCELLED))  # the caller cancelled the RPC itself
    assert breaker.state is State.HALF_OPEN
    breaker.acquire().record_success()
    assert breaker.state is State.CLOSED


def test_an_invalid_argument_probe_is_a_success(make, clock):
    breaker = half_open(make, clock)
    finish(breaker, InvalidArgument("message.content", "must not be empty"))
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize("counted", [False, True])
def test_resource_exhausted_counts_only_when_configured(make, clock, counted):
    breaker = make(failure_threshold=2, failure_rate_threshold=None, count_resource_exhausted=counted)
    finish(breaker, rpc_error(Code.RESOURCE_EXHAUSTED))
    finish(breaker, ResourceExhausted("queue full", 0.5))
    assert breaker.state is (State.OPEN if counted else State.CLOSED)
    assert breaker.failures == (2 if counted else 0)


def test_a_custom_classifier_for_other_protocols(clock):
    class HttpError(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    def http(exc: Exception) -> Outcome:
        return S if isinstance(exc, HttpError) and exc.status < 500 else F

    breaker = CircuitBreaker("provider:openai", clock=clock, classifier=http, on_state_change=[])
    finish(breaker, HttpError(404), times=10)
    assert breaker.state is State.CLOSED
    finish(breaker, HttpError(503), times=5)
    assert breaker.state is State.OPEN


async def test_the_guard_reports_the_block_and_passes_its_exception_on(make):
    breaker = make(failure_threshold=3, failure_rate_threshold=None)
    assert await breaker.call(asyncio.sleep, 0, "ok") == "ok"
    with pytest.raises(grpc.aio.AioRpcError):
        async with breaker.guard():
            raise UNAVAILABLE
    async with breaker.guard() as token:  # an error in disguise: the block's own report wins
        token.record_failure()
    async with breaker.guard() as token:
        token.release()
    assert (breaker.successes, breaker.failures, breaker.ignored) == (1, 2, 1)
    assert breaker.consecutive_failures == 2 and breaker.in_flight == 0


async def test_a_stream_reports_when_it_ends(make):
    breaker = make(failure_threshold=1, failure_rate_threshold=None)

    async def stream(items, error=None):
        token = breaker.acquire()
        try:
            for item in items:
                yield item
            if error is not None:
                raise error
        except BaseException as exc:
            token.record_exception(exc)
            raise
        token.record_success()

    assert [x async for x in stream([1, 2, 3])] == [1, 2, 3]
    partial = stream([1, 2, 3])
    assert await anext(partial) == 1
    await partial.aclose()  # the consumer stopped early (GeneratorExit): neither
    assert (breaker.successes, breaker.ignored, breaker.in_flight) == (1, 1, 0)
    with pytest.raises(grpc.aio.AioRpcError):
        _ = [x async for x in stream([1], UNAVAILABLE)]
    assert breaker.state is State.OPEN


def test_a_token_reports_once(make):
    breaker = make(failure_threshold=1, failure_rate_threshold=None)
    token = breaker.acquire()
    token.record_success()
    token.record_failure()
    token.record_exception(UNAVAILABLE)
    assert token.done and token.outcome is S
    assert breaker.state is State.CLOSED and (breaker.successes, breaker.failures) == (1, 0)


def test_a_token_dropped_without_a_report_frees_the_probe(make, clock):
    breaker = half_open(make, clock)
    breaker.acquire()  # the probe's token is thrown away
    gc.collect()
    assert breaker.in_flight == 0 and breaker.ignored == 1
    assert breaker.acquire().probe


def test_listeners_fire_once_per_transition_and_a_failing_one_is_contained(make, clock, changes, caplog):
    breaker = make(failure_threshold=1, failure_rate_threshold=None, open_timeout_s=10.0)
    calls = []

    def broken(name, old, new):
        raise RuntimeError("metrics down")

    breaker.on_state_change[:0] = [broken]
    breaker.on_state_change.append(lambda *change: calls.append(change))
    with caplog.at_level(logging.ERROR, logger="clawmesh.shared.breaker"):
        finish(breaker, UNAVAILABLE)
        with pytest.raises(BreakerOpen):
            breaker.acquire()
        clock.advance(10.0)
        _ = breaker.state, breaker.state, breaker.stats()
        finish(breaker, UNAVAILABLE)
        clock.advance(10.0)
        finish(breaker)
        finish(breaker)
    expected = [(NAME, State.CLOSED, State.OPEN), (NAME, State.OPEN, State.HALF_OPEN),
                (NAME, State.HALF_OPEN, State.OPEN), (NAME, State.OPEN, State.HALF_OPEN),
                (NAME, State.HALF_OPEN, State.CLOSED)]
    assert changes == expected and calls == expected
    assert len([r for r in caplog.records if "listener" in r.getMessage()]) == 5


def test_the_default_listener_logs_one_line_per_transition(clock, caplog):
    breaker = CircuitBreaker(NAME, clock=clock)
    with caplog.at_level(logging.INFO, logger="clawmesh.shared.breaker"):
        finish(breaker, UNAVAILABLE, times=5)
        clock.advance(10.0)
        assert breaker.state is State.HALF_OPEN
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"circuit breaker {NAME}: closed -> open"),
        (logging.INFO, f"circuit breaker {NAME}: open -> half_open"),
    ]
    assert (caplog.records[0].breaker, caplog.records[0].to_state) == (NAME, "open")
