"""Test doubles shared by every layer: a clock that moves only when told to."""

from __future__ import annotations


class FakeClock:
    """Seconds (monotonic or wall, as the code under test reads them) that tests set."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = now
