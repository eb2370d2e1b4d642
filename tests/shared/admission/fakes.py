"""Test helpers for the admission tests: a fake monotonic clock and a loop turn."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def settle(rounds: int = 5) -> None:
    """Let every ready task run (no time passes: the loop just turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
