"""Which outcomes of a guarded call count against a circuit breaker.

A *classifier* maps an ``Exception`` a call raised to an :class:`Outcome`; a call that
returns is a success. The default for gRPC calls, ``grpc_classifier()``:

- FAILURE: status UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN (the peer is down,
  slow or broken), RESOURCE_EXHAUSTED only with ``count_resource_exhausted=True``, and
  any exception that carries no status code (a connection error, a bug: failure).
- IGNORED: CANCELLED — on the client it is the caller's own cancellation (a
  ``call.cancel()``, or the caller's task being cancelled), not news about the peer.
- SUCCESS: every other code (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...): the
  server answered, the request was the problem. Also any error that carries the
  ``x-clawmesh-fault-origin: downstream`` trailer: the peer answered and is passing on a
  dependency's failure (that dependency's own breaker, one hop further, counts it).

Codes are read from ``grpc.RpcError.code()`` (``grpc.aio.AioRpcError``) and from
``ClawMeshError.code`` (``shared/errors.py``, so a ``Downstream`` or another breaker's
``BreakerOpen`` is classified by its status). ``rpcstats.is_server_fault`` is not reused:
it also counts UNIMPLEMENTED and DATA_LOSS, deterministic answers of a live server that
waiting will not fix. Non-gRPC users (HTTP backends) pass their own classifier::

    def http_classifier(exc: Exception) -> Outcome:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
            return Outcome.SUCCESS
        return Outcome.FAILURE

``asyncio.CancelledError`` and other non-``Exception`` exits (``GeneratorExit`` when a
stream's consumer stops early) never reach a classifier: they are always IGNORED.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import grpc

from clawmesh.shared import metadata as md
from clawmesh.shared.errors import ClawMeshError


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"  # neither: frees a half-open probe slot, changes no count


Classifier = Callable[[Exception], Outcome]

FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def status_code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status an exception carries, or None."""
    if isinstance(exc, ClawMeshError):
        return exc.code
    if isinstance(exc, grpc.RpcError) and callable(code := getattr(exc, "code", None)):
        value = code()
        return value if isinstance(value, grpc.StatusCode) else None
    return None


def _passed_on(exc: Exception) -> bool:
    """The peer answered with a dependency's failure (``metadata.FAULT_ORIGIN``)."""
    trailing = getattr(exc, "trailing_metadata", None)
    if not isinstance(exc, grpc.RpcError) or not callable(trailing):
        return False
    return any(key == md.FAULT_ORIGIN for key, _ in trailing() or ())


def grpc_classifier(count_resource_exhausted: bool = False) -> Classifier:
    """The default classifier (module docstring); RESOURCE_EXHAUSTED fails only if asked."""
    failures = FAILURE_CODES | ({grpc.StatusCode.RESOURCE_EXHAUSTED} if count_resource_exhausted else set())

    def classify(exc: Exception) -> Outcome:
        if _passed_on(exc):
            return Outcome.SUCCESS
        code = status_code_of(exc)
        if code is None or code in failures:
            return Outcome.FAILURE
        if code is grpc.StatusCode.CANCELLED:
            return Outcome.IGNORED
        return Outcome.SUCCESS

    return classify
