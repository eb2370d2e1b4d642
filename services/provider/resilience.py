"""Per-backend resilience: a circuit breaker and bounded retries around every backend call.

    backend = GuardedBackend(OpenAIBackend("deepseek", url, "deepseek-chat"),
                             backend_breaker("deepseek", BreakerConfig.preset("fast_fail")),
                             RetryPolicy(max_attempts=2))
    gen = await backend.generate([Turn("user", "hi")], "", 0)   # BreakerOpen at once while open
    stream = backend.stream([Turn("user", "hi")], "", 0)       # retried before its first token only
    backend.breaker.state                                       # State.CLOSED / OPEN / HALF_OPEN

Every attempt is one call admitted by the backend's breaker and reports one outcome
(``backend_classifier``): a fault (``BackendError.is_fault``: 5xx, connection errors,
timeouts, malformed replies) is a failure; a ``BadRequest`` is a success (the backend
answered); a 429 is a failure only with the config's ``count_resource_exhausted``; the
caller's cancellation is neither. A stream reports when it ends, so a first-token or stall
timeout counts against the backend.

A fault is retried after a jittered exponential backoff, or after the backend's
Retry-After when that is longer, for at most ``max_attempts`` attempts and never past the
call's deadline (``shared.context.current().remaining()``). When the wait would reach the
deadline, exceed ``max_wait_s``, or end while the breaker still refuses calls (this call's
failure opened it), the call fails at once with the last error. A stream that has yielded
text is never retried (the caller would see the text twice), and a refusal by the breaker
(``BreakerOpen``: UNAVAILABLE + RetryInfo) is never retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from clawmesh.services.provider.backends import (
    Backend,
    BackendError,
    BackendInfo,
    Generation,
    Limits,
    RateLimited,
    TextStream,
    ToolSpec,
    Turn,
)
from clawmesh.shared.breaker import MONOTONIC, BreakerConfig, CircuitBreaker, Classifier, Clock, Outcome
from clawmesh.shared.context import current
from clawmesh.shared.retry import RetryPolicy

Sleep = Callable[[float], Awaitable[object]]


def backend_classifier(count_rate_limits: bool = False) -> Classifier:
    """Breaker outcomes of backend errors (module docstring); anything else raised is a failure."""

    def classify(exc: Exception) -> Outcome:
        if isinstance(exc, RateLimited) and not count_rate_limits:
            return Outcome.SUCCESS
        if isinstance(exc, BackendError) and not exc.is_fault:
            return Outcome.SUCCESS
        return Outcome.FAILURE

    return classify


def backend_breaker(name: str, config: BreakerConfig | None = None,
                    clock: Clock = MONOTONIC) -> CircuitBreaker:
    """The breaker of backend ``name`` (default: the ``fast_fail`` preset), with the backend classifier."""
    config = config or BreakerConfig.preset("fast_fail")
    return CircuitBreaker(name, config, clock=clock,
                          classifier=backend_classifier(config.count_resource_exhausted))


def call_remaining() -> float | None:
    """Seconds left until the deadline of the inbound call being served (None: no deadline)."""
    info = current()
    return None if info is None else info.remaining()


class GuardedBackend:
    """A backend behind its breaker, with retries; the same calls as a ``Backend``.

    ``rng`` draws the jitter, ``sleep`` waits, ``remaining`` tells the seconds left until the
    caller's deadline (default: ``call_remaining``): all three are injectable for tests.
    """

    def __init__(self, backend: Backend, breaker: CircuitBreaker | None = None,
                 retry: RetryPolicy | None = None, *, rng: random.Random | None = None,
                 sleep: Sleep = asyncio.sleep,
                 remaining: Callable[[], float | None] = call_remaining) -> None:
        self.backend = backend
        self.breaker = breaker or backend_breaker(backend.info.name)
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()
        self._sleep = sleep
        self._remaining = remaining

    @property
    def info(self) -> BackendInfo:
        return self.backend.info

    @property
    def limits(self) -> Limits:
        return self.backend.limits

    async def generate(self, turns: list[Turn], model: str, max_tokens: int,
                       tools: Sequence[ToolSpec] = ()) -> Generation:
        attempt = 1
        while True:
            try:
                async with self.breaker.guard():  # BreakerOpen at once while open: not retried
                    return await self.backend.generate(turns, model, max_tokens, tools)
            except BackendError as exc:
                await self._before_retry(attempt, exc)
            attempt += 1

    def stream(self, turns: list[Turn], model: str, max_tokens: int,
               tools: Sequence[ToolSpec] = ()) -> TextStream:
        return TextStream(self._stream(turns, model, max_tokens, tools))

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def _stream(self, turns: list[Turn], model: str, max_tokens: int,
                      tools: Sequence[ToolSpec]) -> AsyncIterator[str | Generation]:
        attempt = 1
        while True:
            token = self.breaker.acquire()
            chunks = self.backend.stream(turns, model, max_tokens, tools)
            sent = False
            try:
                async for delta in chunks:
                    sent = True
                    yield delta
            except BackendError as exc:
                token.record_exception(exc)
                if sent:
                    raise
                error = exc
            except BaseException as exc:  # classified; cancelled or the consumer left: ignored
                token.record_exception(exc)
                raise
            else:
                token.record_success()
                yield chunks.result
                return
            finally:
                await chunks.aclose()
            await self._before_retry(attempt, error)
            attempt += 1

    async def _before_retry(self, attempt: int, error: BackendError) -> None:
        """Wait before attempt ``attempt + 1``, or raise ``error`` when there is to be none."""
        if not error.is_fault or attempt >= self.retry.max_attempts:
            raise error
        wait = self.retry.wait_s(attempt, error.retry_after_s, self.rng)
        remaining = self._remaining()
        if (wait > self.retry.max_wait_s or (remaining is not None and wait >= remaining)
                or self.breaker.retry_after() > wait):  # the breaker would refuse the retry
            raise error
        await self._sleep(wait)
