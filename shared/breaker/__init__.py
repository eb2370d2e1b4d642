"""Circuit breakers: stop calling a peer that keeps failing, probe it, resume when it answers.

Plain asyncio with an injected clock, no gRPC calls (the client-chain interceptor and
the provider's backend pool are thin adapters over it). One :class:`CircuitBreaker` per
key (target+method in the mesh's client chain, per backend in the provider):

- CLOSED: every call goes through. It trips to OPEN after ``failure_threshold``
  consecutive failures, or when the failure rate over a sliding window (the last
  ``window_s`` seconds, or the last ``window_calls`` calls) reaches
  ``failure_rate_threshold`` with at least ``minimum_calls`` calls in it.
- OPEN: every call is refused at once with :class:`BreakerOpen` (``retry_after_s`` =
  the time left until a probe may go) for ``open_timeout_s``; then HALF_OPEN.
- HALF_OPEN: exactly one probe call is admitted; everyone else is refused at once
  while it is out (not queued). A probe failure reopens it (a fresh ``open_timeout_s``);
  ``success_threshold`` probe successes, each admitted after the previous one ended,
  close it. A probe that ends neither way (cancelled) frees the slot for the next one.

What counts (``outcome.py``): by default UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
UNKNOWN and exceptions without a status are failures, RESOURCE_EXHAUSTED only with
``count_resource_exhausted``; other codes are successes (the server answered); the
caller's own cancellation (``asyncio.CancelledError``, status CANCELLED) is neither.
Pass ``classifier=`` for non-gRPC peers. Put timeouts *inside* the guard (a gRPC
``timeout=``, or ``asyncio.timeout`` in the block): an ``asyncio.timeout`` around the
guard cancels the block, and a cancellation is not counted.

Usage::

    from clawmesh.shared.breaker import BreakerConfig, BreakerOpen, BreakerRegistry

    breakers = BreakerRegistry(BreakerConfig.preset("fast_fail"))
    breakers.on_state_change.append(lambda name, old, new: gauge.set(name, int(new)))

    async def unary(call, stub):
        async with breakers.get(target + call.method).guard():   # BreakerOpen if refused
            return await stub(call.request, timeout=call.timeout)
        # BreakerOpen is an errors.Unavailable -> UNAVAILABLE + RetryInfo(retry_after_s)

    async def stream(call, stub):                 # outcome reported when the stream ends
        token = breakers.get(target + call.method).acquire()
        try:
            async for response in stub(call.request):
                yield response
        except BaseException as exc:             # CancelledError / GeneratorExit: ignored
            token.record_exception(exc)
            raise
        token.record_success()

    breaker = breakers.get(key)
    breaker.state                 # State.CLOSED / OPEN / HALF_OPEN (proto BreakerState numbers)
    breaker.stats()               # state, failure_rate, consecutive_failures,
                                  # time_in_current_state, calls, successes, failures,
                                  # ignored, refused, in_flight, window_calls, window_failures
    breakers.stats()              # {key: stats}

A single breaker, e.g. in a test: ``CircuitBreaker("name", BreakerConfig(...),
clock=fake_clock)``; ``await breaker.call(fn, *args)`` is ``guard()`` around one await.

Inside ``guard()``, ``token.record_failure()`` (a response that is an error in
disguise) or ``token.release()`` wins over the block's own outcome. Everything runs on
one event loop; nothing here is thread-safe.

Why our own state machine rather than a library (both tried under asyncio, pybreaker
1.4.1 and purgatory 3.0.1):

- pybreaker: with ``with breaker.calling(): await ...`` (the only form that counts an
  awaited outcome), five concurrent calls after the reset timeout were *all* admitted
  in half-open (``success_threshold`` exists but there is no single probe); a cancelled
  call counted as a failure and, with ``fail_max=1``, opened the breaker and replaced
  the ``CancelledError`` with ``CircuitBreakerError``; no failure-rate window (only
  consecutive ``fail_max``); its Redis state storage is synchronous (blocks the loop).
- purgatory (asyncio-native): half-open admitted 5 of 5 concurrent calls too; a
  cancelled call counted as a failure; excluding ``CancelledError`` makes a cancelled
  *probe* close the breaker (an excluded exception is treated as a success); one
  success always closes (no ``success_threshold``); only a consecutive-failure
  threshold; ``time.time()`` is hard-wired (no injectable clock, so no exact tests).

Exactly one probe, cancellation-neutral probes and a rate window are what the mesh
needs, and the state machine is small, so no dependency is added.
"""

from clawmesh.shared.breaker.breaker import (
    MONOTONIC,
    BreakerOpen,
    CircuitBreaker,
    Clock,
    State,
    StateListener,
    Token,
    log_state_change,
)
from clawmesh.shared.breaker.config import PRESETS, BreakerConfig
from clawmesh.shared.breaker.outcome import (
    FAILURE_CODES,
    Classifier,
    Outcome,
    grpc_classifier,
    status_code_of,
)
from clawmesh.shared.breaker.registry import BreakerRegistry

__all__ = [
    "FAILURE_CODES",
    "MONOTONIC",
    "PRESETS",
    "BreakerConfig",
    "BreakerOpen",
    "BreakerRegistry",
    "CircuitBreaker",
    "Classifier",
    "Clock",
    "Outcome",
    "State",
    "StateListener",
    "Token",
    "grpc_classifier",
    "log_state_change",
    "status_code_of",
]
