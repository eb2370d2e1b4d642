"""Failover along a route's chain: the next target when one fails, a stream continued mid-reply.

    engine = FailoverEngine(provider, health, clock=time.monotonic)
    response, target, failures = await engine.generate(plan, request_for, timeout_s=20)
    async for event in engine.stream(plan, request_for, first_token_timeout_s=8):
        ...                      # Delta(text) | Switch(failure, to) | Done(final, target, text)

``request_for(target, partial)`` gives the provider request's fields for a target (``partial``:
the text already streamed, to continue from). What fails over: the provider's
RESOURCE_EXHAUSTED (a 429), UNAVAILABLE (an error, a malformed reply, a first-token or stall
timeout inside the provider, an open breaker) and DEADLINE_EXCEEDED of an attempt, and
routing's own per-attempt budget (``first_token_timeout_s`` for a stream,
``attempt_timeout_s`` for a reply). Anything else (INVALID_ARGUMENT ...) is the request's
fault and passes through, as does the caller's own deadline running out.

A failure before the first token simply goes to the next target. A stream that fails after
some text goes to the next target with that text as an assistant prefix and an instruction to
continue (``prompt.continuation``); ``Overlap`` drops any part of the continuation that
repeats what was already sent, so the caller sees no text twice. Each failure sets the
backend aside (``selection.BackendHealth``). When every target failed: ``ChainFailed``,
UNAVAILABLE with a RetryInfo — the soonest any of them may be tried again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from clawmesh.provider.v1 import provider_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.rules import Target
from clawmesh.services.routing.selection import BackendHealth, Plan
from clawmesh.shared.context import current
from clawmesh.shared.errors import ClawMeshError, Unavailable, retry_after_of

FAILOVER_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED})
RequestFor = Callable[[Target, str], dict]
MIN_ATTEMPT_S = 0.05  # with less of the caller's deadline left, no other target is tried


@dataclass(frozen=True)
class Failure:
    target: Target
    code: grpc.StatusCode
    message: str
    retry_after_s: float | None
    after_chars: int = 0  # text already streamed when it failed

    def to_proto(self, to: Target | None) -> routing_pb2.Failover:
        return routing_pb2.Failover(
            from_backend=self.target.backend, from_model=self.target.model,
            to_backend=to.backend if to else "", to_model=to.model if to else "",
            code=self.code.name, message=self.message, after_chars=self.after_chars,
            continued=bool(self.after_chars and to))


class ChainFailed(Unavailable):
    """Every target of the route failed: UNAVAILABLE + RetryInfo (the soonest retry)."""

    downstream = True  # the backends failed, not routing: breakers in front of it don't count it

    def __init__(self, route: str, failures: list[Failure], retry_after_s: float) -> None:
        tried = "; ".join(f"{f.target.key}: {f.code.name}: {f.message}" for f in failures)
        super().__init__(f"route {route!r}: every target failed ({tried})", retry_after_s)
        self.failures = failures


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Switch:
    failure: Failure
    to: Target | None  # None: no target left


@dataclass(frozen=True)
class Done:
    final: provider_pb2.GenerateStreamResponse  # usage, finish reason, tool calls
    target: Target
    text: str  # everything streamed for this generation, continuations included


class Overlap:
    """Drops the start of a continuation that repeats the end of ``sent``.

    A model told to continue may start over (the whole of ``sent`` again) or repeat its last
    words. The continuation is held back while it could still turn out to be such a repeat;
    then the longest repeat found — all of ``sent``, or a tail of at least ``min_chars`` — is
    cut and the rest released (a continuation that ends inside such a repeat releases nothing).
    Shorter coincidences (a common word) are kept.
    """

    def __init__(self, sent: str, min_chars: int = 8) -> None:
        self.sent = sent
        self.min_chars = min_chars
        self.held = ""
        self.done = False

    def feed(self, delta: str) -> str:
        """The text to pass on now."""
        if self.done:
            return delta
        self.held += delta
        return self._resolve(final=False)

    def flush(self) -> str:
        """At the end of the continuation: whatever is still held."""
        return "" if self.done else self._resolve(final=True)

    def _resolve(self, final: bool) -> str:
        held, sent = self.held, self.sent
        cut = 0
        for start in range(len(sent)):
            tail = sent[start:]
            if start and len(tail) < self.min_chars:
                break
            if held.startswith(tail):
                cut = max(cut, len(tail))
            elif tail.startswith(held):
                if not final:
                    return ""  # may still become a repeat: wait for more
                if start == 0 or len(held) >= self.min_chars:
                    cut = max(cut, len(held))  # the continuation ended inside a repeat
        self.done = True
        return held[cut:]


class FailoverEngine:
    """Runs one model call along a plan's chain (``provider``: a ProviderClient)."""

    def __init__(self, provider, health: BackendHealth, clock: Callable[[], float] = time.monotonic,
                 reserve_s: float = 0.005) -> None:
        self.provider = provider
        self.health = health
        self.clock = clock
        self.reserve_s = reserve_s

    def _spent(self) -> bool:
        """Whether the caller's deadline is (all but) over: no time for another target."""
        info = current()
        remaining = None if info is None else info.remaining()
        return remaining is not None and remaining <= self.reserve_s + MIN_ATTEMPT_S

    def _failure(self, exc: BaseException, target: Target, after_chars: int,
                 timer: asyncio.Timeout | None, budget: str) -> Failure | None:
        """The failure ``exc`` is, when it is one to fail over on (the backend set aside); else None."""
        if isinstance(exc, TimeoutError) and timer is not None and timer.expired():
            code, message, retry = grpc.StatusCode.DEADLINE_EXCEEDED, budget, None
        elif isinstance(exc, grpc.aio.AioRpcError):
            code, message, retry = exc.code(), exc.details() or exc.code().name, retry_after_of(exc)
        elif isinstance(exc, ClawMeshError):
            code, message, retry = exc.code, exc.message, getattr(exc, "retry_after_s", None)
        else:
            return None
        if code not in FAILOVER_CODES or (code == grpc.StatusCode.DEADLINE_EXCEEDED and self._spent()):
            return None  # the request's fault, or the caller's whole deadline: nothing to fail over to
        self.health.failed(target.backend, retry, f"{code.name}: {message}")
        return Failure(target, code, message, retry, after_chars)

    def _exhausted(self, plan: Plan, failures: list[Failure]) -> ChainFailed:
        waits = [f.retry_after_s for f in failures if f.retry_after_s is not None]
        waits += [self.health.retry_in(c.target.backend) for c in plan.chain]
        return ChainFailed(plan.route.name, failures, min(waits))

    async def generate(self, plan: Plan, request_for: RequestFor, timeout_s: float | None = None
                       ) -> tuple[provider_pb2.GenerateResponse, Target, list[routing_pb2.Failover]]:
        """The first reply along the chain, its target, and the failovers before it."""
        failures: list[Failure] = []
        chain = [c.target for c in plan.chain]
        for target in chain:
            started = self.clock()
            timer = asyncio.timeout(timeout_s)
            try:
                async with timer:
                    response = await self.provider.generate(
                        provider_pb2.GenerateRequest(**request_for(target, "")))
            except Exception as exc:
                failure = self._failure(exc, target, 0, timer, f"no reply within {timeout_s:g}s"
                                        if timeout_s else "")
                if failure is None:
                    raise
                failures.append(failure)
                continue
            self.health.succeeded(target.backend, self.clock() - started)
            return response, target, [f.to_proto(chain[i + 1]) for i, f in enumerate(failures)]
        raise self._exhausted(plan, failures)

    async def stream(self, plan: Plan, request_for: RequestFor, first_token_timeout_s: float | None = None
                     ) -> AsyncIterator[Delta | Switch | Done]:
        """The reply's text along the chain; a ``Switch`` after each failure; ``Done`` at the end."""
        sent = ""
        failures: list[Failure] = []
        chain = [c.target for c in plan.chain]
        for i, target in enumerate(chain):
            started = self.clock()
            overlap = Overlap(sent) if sent else None
            request = provider_pb2.GenerateStreamRequest(**request_for(target, sent))
            pieces = self.provider.generate_stream(request)
            timer = None
            got_first = False
            try:
                while True:
                    if got_first or first_token_timeout_s is None:
                        timer = None
                        piece = await anext(pieces)
                    else:
                        timer = asyncio.timeout(first_token_timeout_s)
                        async with timer:
                            piece = await anext(pieces)
                    got_first = True
                    if piece.final:
                        tail = overlap.flush() if overlap else ""
                        if tail:
                            sent += tail
                            yield Delta(tail)
                        self.health.succeeded(target.backend, self.clock() - started)
                        yield Done(piece, target, sent)
                        return
                    text = overlap.feed(piece.delta) if overlap else piece.delta
                    if text:
                        sent += text
                        yield Delta(text)
            except StopAsyncIteration:
                failure = Failure(target, grpc.StatusCode.UNAVAILABLE, "the stream ended without its final "
                                  "response", None, len(sent))
                self.health.failed(target.backend, None, failure.message)
            except Exception as exc:
                failure = self._failure(exc, target, len(sent), timer,
                                        f"no first token within {first_token_timeout_s:g}s"
                                        if first_token_timeout_s else "")
                if failure is None:
                    raise
            finally:
                await pieces.aclose()  # a cancelled or failed attempt ends its provider call now
            failures.append(failure)
            yield Switch(failure, chain[i + 1] if i + 1 < len(chain) else None)
        raise self._exhausted(plan, failures)
