"""Helpers of the dedup tests (no pytest fixtures here: see conftest.py)."""

from __future__ import annotations

import asyncio

from tests.fakes import FakeClock  # noqa: F401 - re-exported for these tests


async def until(predicate, timeout_s: float = 2.0) -> None:
    """Wait for a condition another task makes true (fails the test if it never does)."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110 - the condition is another object's counter
            await asyncio.sleep(0.001)


def waiting(dedup, n: int = 1):
    """A predicate: ``n`` copies have found their key in flight (so they are waiting)."""
    async def predicate() -> bool:
        return (await dedup.stats()).duplicates_found >= n
    return predicate
