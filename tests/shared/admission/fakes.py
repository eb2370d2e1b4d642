"""Test helpers for the admission tests: a fake monotonic clock and a loop turn."""

from __future__ import annotations

import asyncio

from tests.fakes import FakeClock  # noqa: F401 - re-exported for these tests


async def settle(rounds: int = 5) -> None:
    """Let every ready task run (no time passes: the loop just turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
