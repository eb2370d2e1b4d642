"""Config validation, presets, stats and the registry."""

from __future__ import annotations

import dataclasses

import grpc
import pydantic
import pytest

from clawmesh.shared.breaker import (
    PRESETS,
    BreakerConfig,
    BreakerOpen,
    BreakerRegistry,
    CircuitBreaker,
    State,
    log_state_change,
)
from tests.shared.breaker.breaker_helpers import NAME, UNAVAILABLE, finish, rpc_error


@pytest.mark.parametrize("fields", [
    {"failure_threshold": 0}, {"failure_threshold": 2.5}, {"failure_threshold": True},
    {"failure_rate_threshold": 0.0}, {"failure_rate_threshold": 1.5},
    {"failure_rate_threshold": float("nan")},
    {"failure_threshold": None, "failure_rate_threshold": None},
    {"window_s": 0}, {"window_s": -1.0}, {"window_s": float("inf")},
    {"window_calls": 0}, {"window_calls": 10, "minimum_calls": 11},
    {"minimum_calls": 0}, {"open_timeout_s": 0}, {"open_timeout_s": "5"},
    {"success_threshold": 0}, {"count_resource_exhausted": "yes"},
])
def test_bad_values_are_refused(fields):
    with pytest.raises(ValueError, match="invalid breaker config"):
        BreakerConfig(**fields)


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError) as refused:
        BreakerConfig(failure_threshold=0, open_timeout_s=-1, success_threshold=0)
    message = str(refused.value)
    assert all(f in message for f in ("failure_threshold", "open_timeout_s", "success_threshold"))


def test_either_trigger_alone_is_fine():
    assert BreakerConfig(failure_threshold=None).failure_rate_threshold == 0.5
    assert BreakerConfig(failure_rate_threshold=None).failure_threshold == 5
    assert BreakerConfig(window_calls=20, minimum_calls=20).window_calls == 20


def test_the_config_is_usable_as_a_pydantic_field():
    class Settings(pydantic.BaseModel):
        breaker: BreakerConfig = BreakerConfig()

    assert Settings(breaker={"open_timeout_s": 3}).breaker.open_timeout_s == 3
    with pytest.raises(pydantic.ValidationError, match="success_threshold"):
        Settings(breaker={"success_threshold": 0})


def test_presets():
    assert set(PRESETS) == {"fast_fail", "lenient", "strict"}
    fast, lenient, strict = (BreakerConfig.preset(n) for n in ("fast_fail", "lenient", "strict"))
    assert fast.open_timeout_s < lenient.open_timeout_s < strict.open_timeout_s
    assert fast.failure_threshold < lenient.failure_threshold
    assert strict.success_threshold > 1 and strict.count_resource_exhausted
    assert not fast.count_resource_exhausted and not lenient.count_resource_exhausted
    tuned = BreakerConfig.preset("strict", open_timeout_s=120.0)
    assert tuned == dataclasses.replace(strict, open_timeout_s=120.0)
    assert PRESETS["strict"].open_timeout_s == 60.0  # the preset itself is untouched
    with pytest.raises(ValueError, match="unknown breaker preset 'nope'"):
        BreakerConfig.preset("nope")
    with pytest.raises(ValueError, match="invalid breaker config"):
        BreakerConfig.preset("lenient", minimum_calls=0)


def test_stats(make, clock):
    breaker = make(failure_threshold=3, failure_rate_threshold=0.5, minimum_calls=10, open_timeout_s=20.0)
    assert breaker.stats() == {
        "state": 1, "failure_rate": 0.0, "consecutive_failures": 0, "time_in_current_state": 0.0,
        "calls": 0, "successes": 0, "failures": 0, "ignored": 0, "refused": 0, "in_flight": 0,
        "window_calls": 0, "window_failures": 0,
    }
    finish(breaker, times=2)
    finish(breaker, rpc_error(grpc.StatusCode.CANCELLED))
    held = breaker.acquire()
    clock.advance(4.0)
    finish(breaker, UNAVAILABLE, times=3)
    clock.advance(1.5)
    for _ in range(2):
        with pytest.raises(BreakerOpen):
            breaker.acquire()
    assert breaker.stats() == {
        "state": int(State.OPEN), "failure_rate": 0.6, "consecutive_failures": 3,
        "time_in_current_state": 1.5, "calls": 7, "successes": 2, "failures": 3, "ignored": 1,
        "refused": 2, "in_flight": 1, "window_calls": 5, "window_failures": 3,
    }
    assert breaker.time_in_current_state == 1.5 and breaker.failure_rate == 0.6
    held.record_success()
    clock.advance(18.5)
    stats = breaker.stats()
    assert (stats["state"], stats["time_in_current_state"], stats["in_flight"]) == (3, 0.0, 0)


def test_the_registry_makes_one_breaker_per_key(clock):
    seen = []
    registry = BreakerRegistry(BreakerConfig.preset("fast_fail"), clock=clock, on_state_change=[])
    a = registry.get("a")
    assert registry.get("a") is a and registry.get("a", BreakerConfig.preset("strict")).config == a.config
    b = registry.get("b", BreakerConfig(failure_threshold=1, failure_rate_threshold=None))
    assert b.config.failure_threshold == 1 and a.config == PRESETS["fast_fail"]
    assert "a" in registry and "c" not in registry and len(registry) == 2 and list(registry) == [a, b]
    registry.on_state_change.append(lambda *change: seen.append(change))  # after creation
    c = registry.get("c", BreakerConfig(failure_threshold=1, failure_rate_threshold=None))
    finish(b, UNAVAILABLE)
    finish(c, UNAVAILABLE)
    assert seen == [("b", State.CLOSED, State.OPEN), ("c", State.CLOSED, State.OPEN)]
    clock.advance(1.0)
    stats = registry.stats()
    assert list(stats) == ["a", "b", "c"] and stats["b"]["state"] == int(State.OPEN)
    assert stats["b"]["time_in_current_state"] == 1.0 and stats["a"]["calls"] == 0


def test_defaults():
    breaker = CircuitBreaker(NAME)
    assert breaker.config == BreakerConfig() and breaker.on_state_change == [log_state_change]
    assert BreakerRegistry().on_state_change == [log_state_change]
    assert repr(breaker) == f"<CircuitBreaker {NAME} closed>"
