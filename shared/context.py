"""What one inbound call carries onto every outbound call it makes.

The server's context interceptor fills a ``CallInfo`` per RPC (remaining
deadline and the propagated metadata); ``call_options()`` turns it into the
``timeout=`` and ``metadata=`` of an outbound call, so deadlines shrink hop by
hop and tenant / request id / trace context travel with the message::

    reply = await stub.Generate(request, **call_options(settings))
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

from clawmesh.shared import metadata as md
from clawmesh.shared.errors import DeadlineExceeded


@dataclass
class CallInfo:
    """The inbound call being served."""

    method: str
    deadline: float | None  # time.monotonic() value, None when the caller set none
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.headers.get(md.TENANT, "")

    @property
    def request_id(self) -> str:
        return self.headers.get(md.REQUEST_ID, "")

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "clawmesh_call", default=None
)


def current() -> CallInfo | None:
    return _current.get()


def set_current(info: CallInfo | None) -> contextvars.Token:
    return _current.set(info)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)


def call_options(
    default_timeout_s: float, reserve_ms: float = 5.0, headers: dict[str, str] | None = None
) -> dict:
    """``timeout`` and ``metadata`` for an outbound call made while serving a call.

    The timeout is the inbound call's remaining time minus ``reserve_ms`` (kept
    back so this hop can still answer), capped at ``default_timeout_s``.
    ``headers`` add to (or replace) the propagated metadata. Raises
    DeadlineExceeded when nothing is left.
    """
    info = _current.get()
    timeout = default_timeout_s
    out: dict[str, str] = {}
    if info is not None:
        remaining = info.remaining()
        if remaining is not None:
            budget = remaining - reserve_ms / 1000.0
            if budget <= 0:
                raise DeadlineExceeded(f"deadline spent before calling out of {info.method}")
            timeout = min(timeout, budget)
        out = {k: v for k, v in info.headers.items() if k in md.PROPAGATED}
    if headers:
        out.update({k: v for k, v in headers.items() if v})
    return {"timeout": timeout, "metadata": tuple(out.items())}
