"""The order in which a route's targets are tried: balance, backend health, session affinity.

    health = BackendHealth(clock=time.monotonic, cooldown_s=5)
    pins = AffinityPins(max_sessions=100_000, ttl_s=86_400, clock=time.monotonic)
    plan = make_plan(route, ("acme", "s1"), health, pins, random.Random())
    plan.chain[0].target                       # tried first; the rest in order after a failure
    ... the call answers on ``target`` ...
    health.succeeded(target.backend, 0.8)     # or health.failed(backend, retry_after_s, why)
    pins.record(("acme", "s1"), plan, target)

- Balance picks the first of the route's equivalent primary targets: ``first`` (as listed),
  ``weighted`` (by weight: a hash of the session when affinity is on, so every routing replica
  gives a session the same pick; random per message otherwise) or ``least_latency`` (lowest
  EWMA of routing's own successful calls; a backend not measured yet goes first, to measure it).
  Fallbacks follow, in their order.
- Health is what routing saw: a backend whose call failed is *set aside* — tried only after
  the others — until its RetryInfo delay (a provider's open breaker says when its probe may go;
  a 429 its Retry-After) or ``cooldown_s`` has passed.
- Affinity: a session's first answered message pins it to the balance's pick (its *home*). It
  stays there while home is not set aside, moves to the target that answers when home fails,
  and goes back only once home has been healthy (not set aside) for ``return_after_s``: no
  flapping between backends, and the backend's prompt cache stays warm. Pins are per routing
  replica, bounded (least recently used go) and forgotten after ``ttl_s`` idle.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from cachetools import TTLCache

from clawmesh.services.routing.rules import Route, Target

OFF, NEW, HELD, MOVED, RETURNING = "off", "new", "held", "moved", "returning"


@dataclass
class BackendState:
    latency_ms: float | None = None  # EWMA of successful calls
    retry_at: float = -math.inf  # set aside until then
    ever_failed: bool = False
    last_error: str = ""


class BackendHealth:
    """Routing's view of each backend, from its own calls (injected clock)."""

    def __init__(self, clock: Callable[[], float], cooldown_s: float = 5.0, alpha: float = 0.2) -> None:
        self.clock = clock
        self.cooldown_s = cooldown_s
        self.alpha = alpha
        self._states: dict[str, BackendState] = {}

    def _state(self, backend: str) -> BackendState:
        state = self._states.get(backend)
        if state is None:
            state = self._states[backend] = BackendState()
        return state

    def succeeded(self, backend: str, seconds: float) -> None:
        state = self._state(backend)
        ms = seconds * 1000.0
        old = state.latency_ms
        state.latency_ms = ms if old is None else old + self.alpha * (ms - old)
        now = self.clock()
        if now < state.retry_at:  # answered although set aside: healthy from now on
            state.retry_at = now

    def failed(self, backend: str, retry_after_s: float | None, error: str) -> None:
        state = self._state(backend)
        delay = self.cooldown_s if retry_after_s is None else retry_after_s
        state.retry_at = max(state.retry_at, self.clock() + delay)
        state.ever_failed = True
        state.last_error = error

    def available(self, backend: str) -> bool:
        return self.clock() >= self._state(backend).retry_at

    def retry_in(self, backend: str) -> float:
        return max(0.0, self._state(backend).retry_at - self.clock())

    def healthy_for(self, backend: str) -> float:
        """Seconds since the backend stopped being set aside; -1 while it is; inf if it never failed."""
        state = self._state(backend)
        if not state.ever_failed:
            return math.inf
        elapsed = self.clock() - state.retry_at
        return elapsed if elapsed >= 0 else -1.0

    def latency_ms(self, backend: str) -> float | None:
        return self._state(backend).latency_ms


@dataclass
class Pin:
    route: str
    home: str  # Target.key
    current: str


class AffinityPins:
    """Session (any hashable key) -> Pin, bounded and idle-expiring."""

    def __init__(self, max_sessions: int = 100_000, ttl_s: float = 86_400.0,
                 clock: Callable[[], float] | None = None) -> None:
        kwargs = {"timer": clock} if clock is not None else {}
        self._pins: TTLCache = TTLCache(maxsize=max_sessions, ttl=ttl_s, **kwargs)

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, session: Hashable) -> Pin | None:
        return self._pins.get(session)

    def record(self, session: Hashable, plan: Plan, answered: Target) -> None:
        """The call answered on ``answered``: pin a new session to its home, move or return one."""
        if plan.affinity.status == OFF:
            return
        pin = self._pins.get(session)
        keys = {t.key for t in plan.route.targets}
        if pin is None or pin.route != plan.route.name or pin.home not in keys:
            pin = Pin(plan.route.name, plan.preferred.key, answered.key)
        else:
            pin.current = answered.key
        self._pins[session] = pin  # refreshes its idle time


@dataclass(frozen=True)
class Candidate:
    target: Target
    available: bool
    retry_in_s: float
    latency_ms: float | None
    note: str


@dataclass(frozen=True)
class AffinityView:
    status: str
    home: str = ""
    current: str = ""
    home_healthy_for_s: float = 0.0
    return_after_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    route: Route
    chain: tuple[Candidate, ...]
    preferred: Target  # the balance's pick: a new session's home
    affinity: AffinityView
    reason: str


def _unit(*parts: str) -> float:
    """A uniform number in (0, 1) from ``parts`` (the same on every replica)."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def _balanced(route: Route, session: tuple[str, ...], health: BackendHealth,
              rng: random.Random) -> tuple[list[Target], str]:
    """The primary targets in balance order, and what the balance did."""
    primary = list(route.primary)
    if len(primary) == 1:
        return primary, ""
    if route.balance == "weighted":
        if route.affinity.enabled:  # weighted rendezvous hashing of the session
            def draw(t: Target) -> float:
                return _unit(*session, t.key)
        else:
            def draw(t: Target) -> float:
                return 1.0 - rng.random()
        primary.sort(key=lambda t: -math.log(draw(t)) / t.weight)
        return primary, f"weighted pick {primary[0].key}"
    if route.balance == "least_latency":
        primary.sort(key=lambda t: health.latency_ms(t.backend) or 0.0)
        ms = health.latency_ms(primary[0].backend)
        measured = "not measured yet" if ms is None else f"{ms:.0f} ms"
        return primary, f"least latency {primary[0].key} ({measured})"
    return primary, ""


def make_plan(route: Route, session: tuple[str, ...], health: BackendHealth, pins: AffinityPins,
              rng: random.Random, matched: str = "") -> Plan:
    """The chain for one message of ``session`` on ``route``. Reads state; changes none."""
    primary, balance_note = _balanced(route, session, health, rng)
    order = [*primary, *route.fallbacks]
    preferred = order[0]
    affinity, first = _affinity(route, session, order, preferred, health, pins)
    if first is not None:
        order.remove(first)
        order.insert(0, first)
    up = [t for t in order if health.available(t.backend)]
    down = [t for t in order if not health.available(t.backend)]
    chain = tuple(_candidate(t, health, affinity) for t in up + down)
    reason = "; ".join(part for part in (
        matched, balance_note, _affinity_note(affinity),
        ", ".join(f"{t.key} set aside (retry in {health.retry_in(t.backend):.1f}s)" for t in down),
    ) if part)
    return Plan(route, chain, preferred, affinity, reason)


def _affinity(route: Route, session, order: list[Target], preferred: Target, health: BackendHealth,
              pins: AffinityPins) -> tuple[AffinityView, Target | None]:
    """What affinity does, and the target it puts first (None: the balance's order stands)."""
    spec = route.affinity
    if not spec.enabled or len(order) == 1:
        return AffinityView(OFF), None
    by_key = {t.key: t for t in order}
    pin = pins.get(session)
    if pin is None or pin.route != route.name or pin.home not in by_key:
        return AffinityView(NEW, preferred.key, preferred.key, health.healthy_for(preferred.backend),
                            spec.return_after_s), None
    home = by_key[pin.home]
    current = by_key.get(pin.current, home)
    healthy_for = health.healthy_for(home.backend)
    view = dict(home=home.key, home_healthy_for_s=healthy_for, return_after_s=spec.return_after_s)
    if current is home:
        if healthy_for >= 0:
            return AffinityView(HELD, current=home.key, **view), home
        return AffinityView(MOVED, current=home.key, **view), None
    if healthy_for >= spec.return_after_s:
        return AffinityView(RETURNING, current=current.key, **view), home
    return AffinityView(MOVED, current=current.key, **view), current


def _affinity_note(view: AffinityView) -> str:
    if view.status in (OFF, NEW):
        return "" if view.status == OFF else f"new session: home will be {view.home}"
    if view.status == HELD:
        return f"session held on its home {view.home}"
    if view.status == RETURNING:
        return f"session returns to {view.home} (healthy for {view.home_healthy_for_s:.1f}s)"
    healthy = ("set aside now" if view.home_healthy_for_s < 0
               else f"healthy for {view.home_healthy_for_s:.1f}s of {view.return_after_s:g}s")
    return f"session moved to {view.current}: home {view.home} {healthy}"


def _candidate(target: Target, health: BackendHealth, affinity: AffinityView) -> Candidate:
    available = health.available(target.backend)
    if not available:
        note = f"set aside after a failure: tried last (retry in {health.retry_in(target.backend):.1f}s)"
    elif target.key == affinity.current and affinity.status in (HELD, MOVED):
        note = "the session's current target"
    elif target.key == affinity.home and affinity.status == RETURNING:
        note = "the session's home, healthy again"
    else:
        note = "primary" if target.primary else "fallback"
    backend = target.backend
    return Candidate(target, available, health.retry_in(backend), health.latency_ms(backend), note)
