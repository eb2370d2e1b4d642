"""``BreakerRegistry``: one breaker per key, created on first use.

    breakers = BreakerRegistry(BreakerConfig.preset("fast_fail"))
    breakers.on_state_change.append(metric_listener)   # every breaker, also later ones
    breaker = breakers.get(f"{target}{call.method}")
    breakers.stats()   # {key: breaker.stats()}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from clawmesh.shared.breaker.breaker import MONOTONIC, CircuitBreaker, Clock, StateListener, log_state_change
from clawmesh.shared.breaker.config import BreakerConfig
from clawmesh.shared.breaker.outcome import Classifier


class BreakerRegistry:
    """Get-or-create breakers by key. They share the registry's clock, classifier (None:
    each breaker's default for its config) and ``on_state_change`` list (the same list
    object, so a listener appended here reaches breakers created before and after)."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = MONOTONIC,
        classifier: Classifier | None = None,
        on_state_change: Iterable[StateListener] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self.clock = clock
        self.classifier = classifier
        self.on_state_change: list[StateListener] = (
            [log_state_change] if on_state_change is None else list(on_state_change)
        )
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, key: str, config: BreakerConfig | None = None) -> CircuitBreaker:
        """The breaker for ``key``, created with ``config`` (default: the registry's) on first
        use; later calls return it as is, whatever ``config`` they pass."""
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(key, config or self.config, clock=self.clock, classifier=self.classifier)
            breaker.on_state_change = self.on_state_change
            self._breakers[key] = breaker
        return breaker

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def stats(self) -> dict[str, dict[str, int | float]]:
        return {key: breaker.stats() for key, breaker in sorted(self._breakers.items())}
