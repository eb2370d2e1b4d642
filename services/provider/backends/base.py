"""What every backend shares: the data types, a call's metering, its concurrency cap and timeouts.

    class Echo(BaseBackend):
        kind = "echo"

        async def _generate(self, turns, model, max_tokens, tools):
            return Generation(turns[-1].content, model or "echo-1", 0, 0)

        async def _stream(self, turns, model, max_tokens, tools):
            gen = await self._generate(turns, model, max_tokens, tools)
            yield gen.content
            yield gen                      # the last item: the whole Generation

    backend = Echo("echo", ["echo-1"], Limits(max_concurrency=4, first_token_s=5))
    stream = backend.stream([Turn("user", "hi")], "", 0)
    text = "".join([delta async for delta in stream])
    stream.result.finish_reason           # "stop"; backend.stats.in_flight, .latency_ms ...

A subclass's ``_stream`` yields text deltas, ``""`` for progress that carries no text
(a tool-call fragment), and finally one ``Generation``. The base class holds a slot of
``max_concurrency`` for the whole call, applies the timeouts (``generate``: total;
``stream``: first token, stall between items, total) and keeps the counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from clawmesh.services.provider.backends.errors import (
    BackendError,
    FirstTokenTimeout,
    StallTimeout,
    TotalTimeout,
)


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked to run; ``arguments`` is JSON text, as the model produced it."""

    id: str
    name: str
    arguments: str = "{}"

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call; ``parameters`` is its arguments' JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One message of the conversation as a backend sees it."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools
    tool_call_id: str = ""  # tool turns: the call this answers


@dataclass
class Generation:
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls" | "content_filter"
    tool_calls: list[ToolCall] = field(default_factory=list)
    cached: bool = False  # served from the provider's response cache, not the backend


@dataclass
class BackendStats:
    """Counters of one backend; cancelled calls count in none of them."""

    in_flight: int = 0
    waiting: int = 0  # calls queued for a slot of max_concurrency
    calls: int = 0  # finished, well or not
    errors: int = 0
    consecutive_faults: int = 0  # errors that are the backend's fault, since the last success
    latency_ms: float = 0.0  # EWMA of successful calls' duration (a stream: until its end)
    last_error: str = ""


@dataclass
class BackendInfo:
    name: str
    kind: str
    models: list[str] = field(default_factory=list)
    healthy: bool = True
    stats: BackendStats = field(default_factory=BackendStats)
    # Sampling temperature when a request sets none; None: the server's own default (unknown).
    temperature: float | None = None


@dataclass(frozen=True)
class Limits:
    """Concurrency cap and timeouts of one backend; None: no limit."""

    max_concurrency: int | None = None
    first_token_s: float | None = None
    stall_s: float | None = None
    total_s: float | None = None


NO_LIMITS = Limits()


class TextStream:
    """The text deltas of one streamed generation; ``result`` is the Generation once exhausted."""

    def __init__(self, items: AsyncIterator[str | Generation]) -> None:
        self._items = items
        self.result: Generation | None = None

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> str:
        while True:
            item = await anext(self._items)
            if isinstance(item, Generation):
                self.result = item
            elif item:
                return item

    async def aclose(self) -> None:
        """Stop early: closes the backend's request and frees its slot."""
        await self._items.aclose()


class Backend(Protocol):
    info: BackendInfo
    limits: Limits

    async def generate(self, turns: list[Turn], model: str, max_tokens: int,
                       tools: Sequence[ToolSpec] = ()) -> Generation: ...

    def stream(self, turns: list[Turn], model: str, max_tokens: int,
               tools: Sequence[ToolSpec] = ()) -> TextStream: ...

    async def aclose(self) -> None: ...


class BaseBackend:
    """Metering, concurrency cap and timeouts around a subclass's ``_generate`` and ``_stream``."""

    kind: ClassVar[str] = ""
    UNHEALTHY_AFTER: ClassVar[int] = 3  # consecutive faults
    EWMA_ALPHA: ClassVar[float] = 0.2

    def __init__(self, name: str, models: list[str], limits: Limits = NO_LIMITS,
                 temperature: float | None = None) -> None:
        self.info = BackendInfo(name=name, kind=self.kind, models=list(models), temperature=temperature)
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrency) if limits.max_concurrency else None

    @property
    def stats(self) -> BackendStats:
        return self.info.stats

    async def generate(self, turns: list[Turn], model: str, max_tokens: int,
                       tools: Sequence[ToolSpec] = ()) -> Generation:
        async with self._metered():
            timeout = asyncio.timeout(self.limits.total_s)
            try:
                async with timeout:
                    return await self._generate(turns, model, max_tokens, tuple(tools))
            except TimeoutError:
                if timeout.expired():
                    raise TotalTimeout(f"{self.info.name}: no reply within {self.limits.total_s}s") from None
                raise

    def stream(self, turns: list[Turn], model: str, max_tokens: int,
               tools: Sequence[ToolSpec] = ()) -> TextStream:
        return TextStream(self._metered_stream(turns, model, max_tokens, tuple(tools)))

    async def aclose(self) -> None:
        """Release connections; the backend is not used afterwards."""

    async def _generate(self, turns: list[Turn], model: str, max_tokens: int,
                        tools: tuple[ToolSpec, ...]) -> Generation:
        raise NotImplementedError

    def _stream(self, turns: list[Turn], model: str, max_tokens: int,
                tools: tuple[ToolSpec, ...]) -> AsyncIterator[str | Generation]:
        raise NotImplementedError

    async def _metered_stream(self, turns, model, max_tokens, tools) -> AsyncIterator[str | Generation]:
        async with self._metered():
            loop = asyncio.get_running_loop()
            end = None if self.limits.total_s is None else loop.time() + self.limits.total_s
            items = self._stream(turns, model, max_tokens, tools)
            first = True
            try:
                while True:
                    when, error = self._next_deadline(loop.time(), end, first)
                    timeout = asyncio.timeout_at(when)
                    try:
                        async with timeout:
                            item = await anext(items)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        if timeout.expired():
                            raise error from None
                        raise
                    first = False
                    yield item
            finally:
                await items.aclose()

    def _next_deadline(self, now: float, end: float | None, first: bool) -> tuple[float | None, BackendError]:
        """When the next item is due, and the error if it is late (the earlier of phase and total)."""
        name = self.info.name
        if first:
            phase_s, error = self.limits.first_token_s, FirstTokenTimeout(
                f"{name}: no first token within {self.limits.first_token_s}s")
        else:
            phase_s, error = self.limits.stall_s, StallTimeout(
                f"{name}: stream stalled for {self.limits.stall_s}s")
        phase_end = None if phase_s is None else now + phase_s
        if end is not None and (phase_end is None or end <= phase_end):
            return end, TotalTimeout(f"{name}: stream not done within {self.limits.total_s}s")
        return phase_end, error

    @asynccontextmanager
    async def _metered(self):
        stats = self.stats
        if self._slots is not None:
            stats.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                stats.waiting -= 1
        stats.in_flight += 1
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._failed(exc)
            raise
        else:
            self._succeeded((time.perf_counter() - start) * 1000.0)
        finally:
            stats.in_flight -= 1
            if self._slots is not None:
                self._slots.release()

    def _succeeded(self, ms: float) -> None:
        stats = self.stats
        stats.latency_ms = ms if stats.calls == stats.errors else (
            stats.latency_ms + self.EWMA_ALPHA * (ms - stats.latency_ms))
        stats.calls += 1
        stats.consecutive_faults = 0
        self.info.healthy = True

    def _failed(self, exc: Exception) -> None:
        stats = self.stats
        stats.calls += 1
        stats.errors += 1
        stats.last_error = f"{type(exc).__name__}: {exc}"
        if getattr(exc, "is_fault", True):
            stats.consecutive_faults += 1
            self.info.healthy = stats.consecutive_faults < self.UNHEALTHY_AFTER
