"""LLM backends behind one interface. Only `mock` for now; HTTP backends plug in here.

    backend = MockBackend(model="mock-1", latency_s=0.0)
    result = await backend.generate([Turn("user", "hi")], model="", max_tokens=0)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from clawmesh.shared.tokens import estimate_tokens


@dataclass(frozen=True)
class Turn:
    """One message of the conversation as a backend sees it."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str


@dataclass
class Generation:
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls" | "content_filter"


@dataclass
class BackendInfo:
    name: str
    kind: str
    models: list[str] = field(default_factory=list)
    healthy: bool = True


class Backend(Protocol):
    info: BackendInfo

    async def generate(self, turns: list[Turn], model: str, max_tokens: int) -> Generation: ...

    def stream(self, turns: list[Turn], model: str, max_tokens: int) -> AsyncIterator[str]: ...


class MockBackend:
    """A deterministic backend whose reply shows what it saw.

    The reply names the message it answers, how many earlier user turns the
    history held, and the last of them, so tests can tell that memory worked.
    """

    def __init__(self, name: str = "mock", model: str = "mock-1", latency_s: float = 0.0,
                 chunk_words: int = 3) -> None:
        self.info = BackendInfo(name=name, kind="mock", models=[model])
        self.model = model
        self.latency_s = latency_s
        self.chunk_words = chunk_words

    def reply_text(self, turns: list[Turn]) -> str:
        last = turns[-1].content if turns else ""
        earlier = [t.content for t in turns[:-1] if t.role == "user"]
        text = f'mock reply {len(earlier) + 1}: you said "{last}"; {len(earlier)} earlier turn(s)'
        if earlier:
            text += f', previously "{earlier[-1]}"'
        return text

    def _finish(self, turns: list[Turn], model: str, max_tokens: int) -> Generation:
        text = self.reply_text(turns)
        finish = "stop"
        if max_tokens and estimate_tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        return Generation(
            content=text,
            model=model or self.model,
            prompt_tokens=sum(estimate_tokens(t.content) for t in turns),
            completion_tokens=estimate_tokens(text),
            finish_reason=finish,
        )

    async def generate(self, turns: list[Turn], model: str, max_tokens: int) -> Generation:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._finish(turns, model, max_tokens)

    async def stream(self, turns: list[Turn], model: str, max_tokens: int) -> AsyncIterator[str]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        words = self._finish(turns, model, max_tokens).content.split(" ")
        for i in range(0, len(words), self.chunk_words):
            piece = " ".join(words[i : i + self.chunk_words])
            yield piece if i == 0 else " " + piece
