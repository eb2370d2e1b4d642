"""Which methods an interceptor applies to: small predicates that compose.

Every interceptor takes a ``bypass`` filter, evaluated once per method when the
chain is built (never per call)::

    HandlerInterceptor(bypass=any_of(infrastructure, methods("/pkg.Svc/Ping")))
"""

from __future__ import annotations

from collections.abc import Callable

Filter = Callable[[str], bool]

HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection."


def prefixes(*starts: str) -> Filter:
    """Methods whose full name starts with one of ``starts``."""
    return lambda method: method.startswith(starts)


def methods(*names: str) -> Filter:
    """Exactly these full method names."""
    wanted = frozenset(names)
    return lambda method: method in wanted


def any_of(*filters: Filter) -> Filter:
    return lambda method: any(f(method) for f in filters)


#: Health checks and reflection: never limited, deduplicated or counted.
infrastructure: Filter = prefixes(HEALTH, REFLECTION)

#: The Exchange streams themselves (their logical calls go through the chain).
exchange: Filter = lambda method: method.endswith("/Exchange")  # noqa: E731

#: What server interceptors skip by default.
default_bypass: Filter = any_of(infrastructure, exchange)
