"""Fixtures for the breaker tests: a fake clock, a recorded listener, a breaker factory."""

from __future__ import annotations

import pytest

from clawmesh.shared.breaker import BreakerConfig, CircuitBreaker, State
from tests.fakes import FakeClock
from tests.shared.breaker.breaker_helpers import NAME


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[tuple[str, State, State]]:
    """Every (name, old, new) the breakers made by ``make`` reported, in order."""
    return []


@pytest.fixture
def make(clock, changes):
    """``make(**config_fields)`` or ``make(config)``: a breaker on the fake clock."""

    def make(config: BreakerConfig | None = None, **fields) -> CircuitBreaker:
        return CircuitBreaker(NAME, config or BreakerConfig(**fields), clock=clock,
                              on_state_change=[lambda *change: changes.append(change)])

    return make
