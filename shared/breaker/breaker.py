"""The circuit breaker state machine, its admission token and its refusal.

States (numbered as ``clawmesh.provider.v1.BreakerState``)::

    CLOSED --(N failures in a row, or failure rate >= threshold over the window)--> OPEN
    OPEN --(open_timeout_s elapsed; noticed on the next acquire or state read)--> HALF_OPEN
    HALF_OPEN --(probe failed)--> OPEN (a fresh open_timeout_s)
    HALF_OPEN --(success_threshold probes succeeded, one after another)--> CLOSED

Every admitted call holds a :class:`Token` and reports one outcome. Each transition
starts a new *epoch*; a token reports into the epoch it was admitted in, so calls
admitted while closed that end after the breaker opened are counted in the stats but
move nothing (they are neither the probe nor news about the recovered peer).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from clawmesh.shared.breaker.config import BreakerConfig
from clawmesh.shared.breaker.outcome import Classifier, Outcome, grpc_classifier
from clawmesh.shared.errors import Unavailable

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Monotonic seconds."""

MONOTONIC: Clock = time.monotonic

R = TypeVar("R")


class State(enum.IntEnum):
    """Same numbers as ``clawmesh.provider.v1.BreakerState`` (so ``stats()`` stays numeric)."""

    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3

    @property
    def label(self) -> str:
        return self.name.lower()  # "half_open"


StateListener = Callable[[str, State, State], None]
"""``listener(name, old, new)``, called once per transition, on the event loop."""


def log_state_change(name: str, old: State, new: State) -> None:
    """The default listener: one log line per transition (WARNING when it opens)."""
    log.log(logging.WARNING if new is State.OPEN else logging.INFO,
            "circuit breaker %s: %s -> %s", name, old.label, new.label,
            extra={"breaker": name, "from_state": old.label, "to_state": new.label})


class BreakerOpen(Unavailable):
    """A call refused by an open breaker, or by a half-open one whose probe is out.

    An ``errors.Unavailable``: the error interceptor answers UNAVAILABLE with a
    RetryInfo of ``retry_after_s`` — when open, the time left until a probe may go; when
    half-open, ``open_timeout_s`` (the probe's fate is unknown; should it fail, the
    breaker stays open that long).
    """

    downstream = True  # the caller's peer is fine: it refused to call a sick one

    def __init__(self, name: str, retry_after_s: float, state: State) -> None:
        super().__init__(f"circuit breaker {name} is {state.label}; retry after {retry_after_s:.3g}s",
                         retry_after_s)
        self.name = name
        self.state = state


class _TimeWindow:
    """Calls and failures over the last ``window_s``, in ``SLICES`` slices."""

    SLICES = 10

    def __init__(self, window_s: float) -> None:
        self.width = window_s / self.SLICES
        self.slices: deque[list[int]] = deque()  # [slice index, calls, failures]
        self.calls = self.failures = 0

    def counts(self, now: float) -> tuple[int, int]:
        oldest = math.floor(now / self.width) - self.SLICES + 1
        while self.slices and self.slices[0][0] < oldest:
            _, calls, failures = self.slices.popleft()
            self.calls -= calls
            self.failures -= failures
        return self.calls, self.failures

    def add(self, failed: bool, now: float) -> None:
        self.counts(now)
        index = math.floor(now / self.width)
        if not self.slices or self.slices[-1][0] < index:  # a clock going back adds to the last
            self.slices.append([index, 0, 0])
        last = self.slices[-1]
        last[1] += 1
        last[2] += failed
        self.calls += 1
        self.failures += failed

    def clear(self) -> None:
        self.slices.clear()
        self.calls = self.failures = 0


class _CountWindow:
    """Calls and failures over the last ``size`` outcomes."""

    def __init__(self, size: int) -> None:
        self.outcomes: deque[bool] = deque(maxlen=size)
        self.failures = 0

    def counts(self, now: float) -> tuple[int, int]:
        return len(self.outcomes), self.failures

    def add(self, failed: bool, now: float) -> None:
        if len(self.outcomes) == self.outcomes.maxlen:
            self.failures -= self.outcomes[0]
        self.outcomes.append(failed)
        self.failures += failed

    def clear(self) -> None:
        self.outcomes.clear()
        self.failures = 0


class Token:
    """One admitted call. Report its outcome once; later reports are ignored.

    A token dropped without a report counts as ``release()``, so a forgotten probe
    cannot wedge the breaker half-open.
    """

    __slots__ = ("breaker", "epoch", "probe", "outcome")

    def __init__(self, breaker: CircuitBreaker, epoch: int, probe: bool) -> None:
        self.breaker = breaker
        self.epoch = epoch
        self.probe = probe  # admitted as the half-open probe
        self.outcome: Outcome | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def record(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.breaker._finish(self, outcome)

    def record_success(self) -> None:
        self.record(Outcome.SUCCESS)

    def record_failure(self) -> None:
        self.record(Outcome.FAILURE)

    def release(self) -> None:
        """Neither success nor failure (the caller gave up): frees the probe slot."""
        self.record(Outcome.IGNORED)

    def record_exception(self, exc: BaseException) -> None:
        """The call raised ``exc``: classified; cancellation and other non-``Exception``
        exits (``CancelledError``, ``GeneratorExit``) are always ignored."""
        self.record(self.breaker.classify(exc) if isinstance(exc, Exception) else Outcome.IGNORED)

    def __del__(self) -> None:
        if self.outcome is None:
            self.release()


class _Guard:
    __slots__ = ("_breaker", "_token")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._token: Token | None = None

    async def __aenter__(self) -> Token:
        self._token = self._breaker.acquire()
        return self._token

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._token is not None:
            if exc is None:
                self._token.record_success()
            else:
                self._token.record_exception(exc)


class CircuitBreaker:
    """One breaker (per target+method, per provider backend). See the package docstring.

    ``classifier`` defaults to ``grpc_classifier(config.count_resource_exhausted)``;
    ``on_state_change`` to ``[log_state_change]`` (a public list: append listeners).
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = MONOTONIC,
        classifier: Classifier | None = None,
        on_state_change: Iterable[StateListener] | None = None,
    ) -> None:
        self.name = name
        self.config = config = config or BreakerConfig()
        self.clock = clock
        self.classify: Classifier = classifier or grpc_classifier(config.count_resource_exhausted)
        self.on_state_change: list[StateListener] = (
            [log_state_change] if on_state_change is None else list(on_state_change)
        )
        self._window = _CountWindow(config.window_calls) if config.window_calls else _TimeWindow(
            config.window_s)
        self._state = State.CLOSED
        self._changed_at = clock()
        self._epoch = 0
        self._probe_out = False  # a probe is in flight (no reference: a dropped token frees it)
        self._probe_successes = 0
        self._consecutive = 0
        self._in_flight = 0
        self.calls = 0  # admitted
        self.successes = 0
        self.failures = 0
        self.ignored = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self._state.label}>"

    # -- calls -------------------------------------------------------------------------

    def acquire(self) -> Token:
        """Admit one call or raise :class:`BreakerOpen` at once (never waits).

        The caller must report the outcome on the token (``record_success()``,
        ``record_failure()``, ``record_exception(exc)`` or ``release()``), e.g. when a
        stream ends.
        """
        now = self.clock()
        self._poll(now)
        if self._state is State.HALF_OPEN and not self._probe_out:
            probe = True
        elif self._state is State.CLOSED:
            probe = False
        else:
            self.refused += 1
            raise BreakerOpen(self.name, self._retry_after(now), self._state)
        token = Token(self, self._epoch, probe)
        self._probe_out |= probe
        self.calls += 1
        self._in_flight += 1
        return token

    def guard(self) -> _Guard:
        """``async with breaker.guard() as token:`` — acquire, then report the block's
        outcome: success if it exits normally, else ``token.record_exception(exc)``.
        A report made inside the block (``token.record_failure()``) takes precedence."""
        return _Guard(self)

    async def call(self, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """``await fn(*args, **kwargs)`` inside :meth:`guard`."""
        async with self.guard():
            return await fn(*args, **kwargs)

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        self._poll(self.clock())
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def failure_rate(self) -> float:
        """Failures / calls in the current window (0.0 when empty), ``minimum_calls`` or not."""
        calls, failures = self._window.counts(self.clock())
        return failures / calls if calls else 0.0

    @property
    def time_in_current_state(self) -> float:
        """Seconds on the breaker's clock since the last transition (or creation)."""
        now = self.clock()
        self._poll(now)
        return now - self._changed_at

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def retry_after(self) -> float:
        """What a refusal would say now (0.0 when a call would be admitted)."""
        now = self.clock()
        self._poll(now)
        if self._state is State.CLOSED or (self._state is State.HALF_OPEN and not self._probe_out):
            return 0.0
        return self._retry_after(now)

    def stats(self) -> dict[str, int | float]:
        now = self.clock()
        self._poll(now)
        window_calls, window_failures = self._window.counts(now)
        return {
            "state": int(self._state),
            "failure_rate": window_failures / window_calls if window_calls else 0.0,
            "consecutive_failures": self._consecutive,
            "time_in_current_state": now - self._changed_at,
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "ignored": self.ignored,
            "refused": self.refused,
            "in_flight": self._in_flight,
            "window_calls": window_calls,
            "window_failures": window_failures,
        }

    # -- internals ---------------------------------------------------------------------

    def _retry_after(self, now: float) -> float:
        if self._state is State.OPEN:
            return self._changed_at + self.config.open_timeout_s - now
        return self.config.open_timeout_s

    def _poll(self, now: float) -> None:
        if self._state is State.OPEN and now >= (due := self._changed_at + self.config.open_timeout_s):
            self._transition(State.HALF_OPEN, due)

    def _finish(self, token: Token, outcome: Outcome) -> None:
        self._in_flight -= 1
        if outcome is Outcome.SUCCESS:
            self.successes += 1
        elif outcome is Outcome.FAILURE:
            self.failures += 1
        else:
            self.ignored += 1
        if token.epoch != self._epoch:
            return
        if token.probe:  # the one unreported probe of this epoch
            self._probe_out = False
        if outcome is Outcome.IGNORED:
            return
        now = self.clock()
        cfg = self.config
        if outcome is Outcome.SUCCESS:
            self._consecutive = 0
            if self._state is State.CLOSED:
                self._window.add(False, now)
            else:  # the half-open probe (only probes are admitted in this epoch)
                self._probe_successes += 1
                if self._probe_successes >= cfg.success_threshold:
                    self._transition(State.CLOSED, now)
            return
        self._consecutive += 1
        if self._state is State.HALF_OPEN:
            self._transition(State.OPEN, now)
            return
        self._window.add(True, now)
        calls, failures = self._window.counts(now)
        if (cfg.failure_threshold is not None and self._consecutive >= cfg.failure_threshold) or (
            cfg.failure_rate_threshold is not None and calls >= cfg.minimum_calls
            and failures / calls >= cfg.failure_rate_threshold
        ):
            self._transition(State.OPEN, now)

    def _transition(self, new: State, at: float) -> None:
        old, self._state = self._state, new
        self._changed_at = at
        self._epoch += 1
        self._probe_out = False
        self._probe_successes = 0
        if new is State.CLOSED:
            self._window.clear()
            self._consecutive = 0
        for listener in list(self.on_state_change):
            try:
                listener(self.name, old, new)
            except Exception:
                log.exception("circuit breaker %s: state listener %r failed", self.name, listener)
