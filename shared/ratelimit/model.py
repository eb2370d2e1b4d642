"""The value types of the rate limiter: limits, rules, descriptors, decisions, errors.

Time inside the limiter is integer microseconds, so the Python arithmetic of the
in-process backend and the Lua arithmetic of the Redis backend (doubles, exact for
integers below 2**53) give the same answers to the microsecond.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Protocol
from urllib.parse import quote

from clawmesh.shared.errors import ResourceExhausted, Unavailable

Clock = Callable[[], float]
"""Seconds. Any origin for the in-process backend; shared by all replicas for Redis."""

Descriptor = tuple[tuple[str, str], ...]
"""``(("tenant", "acme"), ("sender", "u1"))``: ordered (key, value) pairs."""

UNKNOWN_REMAINING = -1
"""``Decision.remaining`` when no limit applies or the backend could not be asked."""

US_PER_S = 1_000_000


def to_us(seconds: float) -> int:
    """A clock reading in whole microseconds (rounded, so 0.003 s is 3000 µs)."""
    return round(seconds * US_PER_S)


@dataclass(frozen=True)
class Limit:
    """``rate`` per ``per_s`` seconds sustained, up to ``burst`` at once.

    The emission interval (the time one unit of quota takes to come back) is
    ``per_s / rate`` rounded *up* to a whole microsecond, so the limiter never admits
    more than the nominal rate. ``burst`` defaults to ``ceil(rate)``.
    """

    name: str
    rate: float
    per_s: float = 1.0
    burst: int = 0

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"limit name must be non-empty, without ':' ({self.name!r})")
        if not (self.rate > 0 and self.per_s > 0 and math.isfinite(self.rate / self.per_s)):
            raise ValueError(f"limit {self.name!r}: rate and per_s must be positive")
        if self.burst == 0:
            object.__setattr__(self, "burst", max(1, math.ceil(self.rate)))
        if self.burst < 1 or int(self.burst) != self.burst:
            raise ValueError(f"limit {self.name!r}: burst must be a positive integer")

    @classmethod
    def per_second(cls, name: str, rate: float, burst: int = 0) -> Limit:
        return cls(name, rate, 1.0, burst)

    @classmethod
    def per_minute(cls, name: str, rate: float, burst: int = 0) -> Limit:
        return cls(name, rate, 60.0, burst)

    @cached_property
    def interval_us(self) -> int:
        """Microseconds per unit of quota (decimal reading of the floats, rounded up)."""
        exact = Fraction(repr(float(self.per_s))) * US_PER_S / Fraction(repr(float(self.rate)))
        return max(1, math.ceil(exact))


@dataclass(frozen=True)
class Rule:
    """The limits that apply to descriptors of one shape, envoy-style.

    ``match`` lists (key, value) pairs; a value of ``None`` matches any value, and
    each distinct value gets its own quota. A descriptor matches when it has exactly
    these keys in this order. When several rules match, the one naming the most
    values wins (``(("tenant", "acme"),)`` overrides ``(("tenant", None),)``). Every
    limit of the winning rule must admit a request.
    """

    match: tuple[tuple[str, str | None], ...]
    limits: tuple[Limit, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "match", tuple((k, v) for k, v in self.match))
        object.__setattr__(self, "limits", tuple(self.limits))
        if not self.match or not self.limits:
            raise ValueError("a rule needs at least one descriptor key and one limit")
        names = [limit.name for limit in self.limits]
        if len(set(names)) != len(names):
            raise ValueError(f"limit names repeat in rule {self.match}: {names}")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.match)

    @property
    def specificity(self) -> int:
        return sum(v is not None for _, v in self.match)

    def matches(self, descriptor: Descriptor) -> bool:
        if len(descriptor) != len(self.match):
            return False
        return all(k == dk and (v is None or v == dv)
                   for (k, v), (dk, dv) in zip(self.match, descriptor, strict=True))


def descriptor_key(descriptor: Descriptor) -> str:
    """A stable, escaped text form: ``tenant=acme&sender=u1`` (no braces, no ':')."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in descriptor)


def bucket_keys(descriptor: Descriptor, limits: Sequence[Limit]) -> list[str]:
    """One state key per limit; ``{…}`` is a Redis Cluster hash tag (same slot for all)."""
    dk = descriptor_key(descriptor)
    return [f"{{{dk}}}:{limit.name}" for limit in limits]


@dataclass(frozen=True)
class Decision:
    """The answer to one check.

    - ``allowed``: the request may go ahead (its cost has been taken from every limit).
    - ``retry_after_s``: when refused, the wait until the same request would be
      admitted if nothing else arrives (``inf`` when its cost exceeds a burst); 0 if allowed.
    - ``remaining``: cost the named limit would still admit right now (-1 = unknown).
    - ``limit_name``: refused: the limit with the longest wait; allowed: the limit
      with the least quota left ("" when no rule applies or the backend failed open).
    - ``degraded``: the backend could not be asked and the limiter failed open.
    """

    allowed: bool
    retry_after_s: float
    remaining: int
    limit_name: str
    degraded: bool = False

    def error(self, descriptor: Descriptor = ()) -> RateLimited:
        """The exception a server raises for this refusal (RESOURCE_EXHAUSTED + RetryInfo)."""
        subject = f"ratelimit:{self.limit_name}"
        if descriptor:
            subject += f":{descriptor_key(descriptor)}"
        retry = None if math.isinf(self.retry_after_s) else self.retry_after_s
        return RateLimited(f"rate limit {self.limit_name!r} exceeded", retry_after_s=retry, subject=subject)


class RateLimited(ResourceExhausted):
    """A refusal as an exception (``Decision.error()``); the limiter never raises it itself."""


class RateLimitUnavailable(Unavailable):
    """Fail-closed: the backend could not be asked; gRPC's UNAVAILABLE, not a quota refusal.

    ``retry_after_s`` is the time until the limiter asks the backend again.
    """


class BackendError(Exception):
    """A backend could not answer (timeout, connection, script error). Internal."""


@dataclass
class RateLimitStats:
    """Counters since start. ``checks == allowed + refused`` always; ``backend_errors``
    counts the checks (among those) decided by the fail policy, not by the backend."""

    checks: int = 0
    allowed: int = 0
    refused: int = 0
    backend_errors: int = 0
    by_limit: dict[str, int] = field(default_factory=dict)  # refusals per limit name

    def snapshot(self) -> dict[str, int]:
        return {"checks": self.checks, "allowed": self.allowed, "refused": self.refused,
                "backend_errors": self.backend_errors}


class Backend(Protocol):
    """Where bucket state lives. ``acquire`` is atomic over all ``keys``: either every
    limit admits and each takes ``cost``, or nothing changes."""

    async def acquire(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision: ...

    async def aclose(self) -> None: ...
