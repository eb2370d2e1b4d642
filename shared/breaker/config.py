"""``BreakerConfig``: when a circuit breaker trips, how long it stays open, how it closes.

A frozen dataclass validated on construction (``ValueError`` naming the field), so it
can also be a field of a pydantic settings model. Three named presets::

    BreakerConfig.preset("fast_fail")                      # PRESETS["fast_fail"]
    BreakerConfig.preset("strict", open_timeout_s=120.0)   # a preset with overrides
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Trip on ``failure_threshold`` consecutive failures, or when the failure rate over the
    window reaches ``failure_rate_threshold`` once it holds ``minimum_calls`` calls (either
    trigger may be ``None``, not both). Stay open ``open_timeout_s``, then admit one probe
    at a time; ``success_threshold`` probe successes in a row close it, a failure reopens it.

    The window is the last ``window_s`` seconds (kept in ten slices of ``window_s / 10``,
    so a call leaves it between 0.9 and 1.0 × ``window_s`` after it ended), or, when
    ``window_calls`` is set, the last ``window_calls`` outcomes (``window_s`` is then unused).
    ``count_resource_exhausted``: RESOURCE_EXHAUSTED counts as a failure (default: as a
    success — the server answered, it is shedding load and says when to come back).
    """

    failure_threshold: int | None = 5
    failure_rate_threshold: float | None = 0.5
    window_s: float = 30.0
    window_calls: int | None = None
    minimum_calls: int = 20
    open_timeout_s: float = 10.0
    success_threshold: int = 2
    count_resource_exhausted: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.failure_threshold is not None and not (
            _is_int(self.failure_threshold) and self.failure_threshold >= 1
        ):
            problems.append("failure_threshold must be an int >= 1 or None")
        rate = self.failure_rate_threshold
        if rate is not None and not (_is_seconds(rate) and 0.0 < rate <= 1.0):
            problems.append("failure_rate_threshold must be in (0, 1] or None")
        if self.failure_threshold is None and rate is None:
            problems.append("failure_threshold and failure_rate_threshold cannot both be None")
        if not (_is_seconds(self.window_s) and self.window_s > 0):
            problems.append("window_s must be a positive number of seconds")
        if self.window_calls is not None and not (_is_int(self.window_calls) and self.window_calls >= 1):
            problems.append("window_calls must be an int >= 1 or None")
        if not (_is_int(self.minimum_calls) and self.minimum_calls >= 1):
            problems.append("minimum_calls must be an int >= 1")
        elif _is_int(self.window_calls) and self.minimum_calls > self.window_calls:
            problems.append("minimum_calls must not exceed window_calls (the rate would never count)")
        if not (_is_seconds(self.open_timeout_s) and self.open_timeout_s > 0):
            problems.append("open_timeout_s must be a positive number of seconds")
        if not (_is_int(self.success_threshold) and self.success_threshold >= 1):
            problems.append("success_threshold must be an int >= 1")
        if not isinstance(self.count_resource_exhausted, bool):
            problems.append("count_resource_exhausted must be a bool")
        if problems:
            raise ValueError("invalid breaker config: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str, **overrides) -> BreakerConfig:
        """``PRESETS[name]`` with ``overrides`` applied (validated again)."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown breaker preset {name!r} (known: {', '.join(PRESETS)})") from None
        return dataclasses.replace(base, **overrides)


PRESETS: dict[str, BreakerConfig] = {
    # Interactive paths (a user waits on the chat reply): give up on a sick backend after
    # 3 failures or 25 % of 10+ calls in 10 s, try again after 5 s, one good probe closes.
    "fast_fail": BreakerConfig(
        failure_threshold=3, failure_rate_threshold=0.25, window_s=10.0, minimum_calls=10,
        open_timeout_s=5.0, success_threshold=1,
    ),
    # Flaky but essential backends (LLM providers with sporadic 5xx): trip only on a
    # sustained outage — 20 in a row, or 80 % of 50+ calls in a minute; retry after 15 s.
    "lenient": BreakerConfig(
        failure_threshold=20, failure_rate_threshold=0.8, window_s=60.0, minimum_calls=50,
        open_timeout_s=15.0, success_threshold=1,
    ),
    # Backends that must be protected while they recover (stores, shared state): trip
    # early (3 in a row, 20 % of 20+ calls in 30 s, overload counts), stay open a
    # minute, and need 3 good probes in a row before full traffic returns.
    "strict": BreakerConfig(
        failure_threshold=3, failure_rate_threshold=0.2, window_s=30.0, minimum_calls=20,
        open_timeout_s=60.0, success_threshold=3, count_resource_exhausted=True,
    ),
}
