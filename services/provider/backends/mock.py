"""The embedded backend: a deterministic reply, with latency, jitter and injected faults.

    backend = MockBackend(model="mock-1", latency_s=0.05, seed=7,
                          faults=[RateLimitFault(rate=0.1, retry_after_s=2)])
    gen = await backend.generate([Turn("user", "hi")], model="", max_tokens=0)
    gen.content        # 'mock reply 1: you said "hi"; 0 earlier turn(s)'  (or RateLimited)

Each call draws at most one fault from the seeded RNG, in list order by rate: the same
seed gives the same faults and jitter for the same sequence of calls. Faults surface as
the backends' exceptions (``RateLimited``, ``BackendUnavailable``, ``MalformedResponse``),
and delays (slow first token, a stall) trip the backend's own timeouts when they are set.
``temperature`` only says what the mock stands for (its reply never varies): 0 lets the
provider's response cache keep its replies, None (the default) does not.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from clawmesh.services.provider.backends.base import (
    NO_LIMITS,
    BaseBackend,
    Generation,
    Limits,
    ToolCall,
    ToolSpec,
    Turn,
)
from clawmesh.services.provider.backends.errors import BackendUnavailable, MalformedResponse, RateLimited
from clawmesh.shared.settings import (
    ErrorFault,
    MalformedFault,
    MockBackendConfig,
    MockFault,
    RateLimitFault,
    SlowFirstTokenFault,
    StallFault,
    ToolCallConfig,
)
from clawmesh.shared.tokens import estimate_tokens


class MockBackend(BaseBackend):
    """A deterministic backend whose reply shows what it saw.

    The reply names the message it answers, how many earlier user turns the
    history held, and the last of them, so tests can tell that memory worked.
    With a ``tool_script``, the model's first turns after a user message call
    tools (round k: ``tool_script[k]``), then it answers.
    """

    kind = "mock"

    def __init__(self, name: str = "mock", model: str = "mock-1", latency_s: float = 0.0,
                 chunk_words: int = 3, *, jitter_s: float = 0.0, chunk_delay_s: float = 0.0,
                 faults: Sequence[MockFault] = (), tool_script: Sequence[Sequence[ToolCall]] = (),
                 seed: int | None = None, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 limits: Limits = NO_LIMITS, temperature: float | None = None) -> None:
        super().__init__(name, [model], limits, temperature)
        self.model = model
        self.latency_s = latency_s
        self.chunk_words = chunk_words
        self.jitter_s = jitter_s
        self.chunk_delay_s = chunk_delay_s
        self.faults = list(faults)
        self.tool_script = [list(calls) for calls in tool_script]
        self.rng = rng or random.Random(seed)
        self._sleep = sleep

    @classmethod
    def from_config(cls, name: str, cfg: MockBackendConfig) -> MockBackend:
        return cls(
            name=name, model=cfg.model, latency_s=cfg.latency_s, chunk_words=cfg.chunk_words,
            jitter_s=cfg.jitter_s, chunk_delay_s=cfg.chunk_delay_s, faults=cfg.faults,
            tool_script=[[_tool_call(call, r, i) for i, call in enumerate(calls)]
                         for r, calls in enumerate(cfg.tool_script)],
            seed=cfg.seed,
            limits=Limits(cfg.max_concurrency, cfg.first_token_timeout_s, cfg.stall_timeout_s,
                          cfg.total_timeout_s),
            temperature=cfg.temperature,
        )

    def reply_text(self, turns: list[Turn]) -> str:
        last = turns[-1].content if turns else ""
        earlier = [t.content for t in turns[:-1] if t.role == "user"]
        text = f'mock reply {len(earlier) + 1}: you said "{last}"; {len(earlier)} earlier turn(s)'
        if earlier:
            text += f', previously "{earlier[-1]}"'
        return text

    def _finish(self, turns: list[Turn], model: str, max_tokens: int) -> Generation:
        prompt_tokens = sum(estimate_tokens(t.content) for t in turns)
        calls = self._scripted_calls(turns)
        if calls:
            return Generation(content="", model=model or self.model, prompt_tokens=prompt_tokens,
                              completion_tokens=estimate_tokens(json.dumps([c.to_openai() for c in calls])),
                              finish_reason="tool_calls", tool_calls=calls)
        text = self.reply_text(turns)
        finish = "stop"
        if max_tokens and estimate_tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        return Generation(
            content=text,
            model=model or self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=estimate_tokens(text),
            finish_reason=finish,
        )

    def _scripted_calls(self, turns: list[Turn]) -> list[ToolCall]:
        """Round k of the script, k = assistant turns since the last user turn."""
        users = [i for i, t in enumerate(turns) if t.role == "user"]
        since = turns[users[-1] + 1:] if users else turns
        round_ = sum(1 for t in since if t.role == "assistant")
        return list(self.tool_script[round_]) if round_ < len(self.tool_script) else []

    def _draw(self) -> MockFault | None:
        if not self.faults:
            return None
        r = self.rng.random()
        for fault in self.faults:
            if r < fault.rate:
                return fault
            r -= fault.rate
        return None

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await self._sleep(seconds)

    async def _start(self, fault: MockFault | None) -> None:
        """Latency, then the faults that replace the whole reply, then a slow first token."""
        await self._pause(self.latency_s + (self.rng.uniform(0, self.jitter_s) if self.jitter_s else 0.0))
        name = self.info.name
        if isinstance(fault, ErrorFault):
            raise BackendUnavailable(f"{name}: injected error (HTTP 503)")
        if isinstance(fault, RateLimitFault):
            raise RateLimited(f"{name}: injected rate limit (HTTP 429)", fault.retry_after_s)
        if isinstance(fault, SlowFirstTokenFault):
            await self._pause(fault.delay_s)

    async def _generate(self, turns: list[Turn], model: str, max_tokens: int,
                        tools: tuple[ToolSpec, ...]) -> Generation:
        fault = self._draw()
        await self._start(fault)
        if isinstance(fault, StallFault):
            await self._pause(fault.delay_s)
        if isinstance(fault, MalformedFault):
            raise MalformedResponse(f"{self.info.name}: injected malformed reply")
        return self._finish(turns, model, max_tokens)

    async def _stream(self, turns: list[Turn], model: str, max_tokens: int,
                      tools: tuple[ToolSpec, ...]) -> AsyncIterator[str | Generation]:
        fault = self._draw()
        await self._start(fault)
        gen = self._finish(turns, model, max_tokens)
        words = gen.content.split(" ") if gen.content else []
        pieces = [" ".join(words[i : i + self.chunk_words]) for i in range(0, len(words), self.chunk_words)]
        pieces = [p if i == 0 else " " + p for i, p in enumerate(pieces)] or [""]
        for i in range(len(pieces) + 1):
            if isinstance(fault, StallFault) and i == fault.after_chunks:
                await self._pause(fault.delay_s)
            if isinstance(fault, MalformedFault) and i == fault.after_chunks:
                raise MalformedResponse(f"{self.info.name}: injected malformed chunk {i}")
            if i == len(pieces):
                break
            if i:
                await self._pause(self.chunk_delay_s)
            yield pieces[i]
        yield gen


def _tool_call(cfg: ToolCallConfig, round_: int, index: int) -> ToolCall:
    arguments = cfg.arguments if isinstance(cfg.arguments, str) else json.dumps(cfg.arguments)
    return ToolCall(id=cfg.id or f"call_{round_}_{index}", name=cfg.name, arguments=arguments)
