"""What one inbound call carries onto every outbound call it makes.

The server's context interceptor sets a ``CallInfo`` for each logical call
(an RPC, or a call on an Exchange stream): its deadline and its metadata. The
client chain's propagation interceptor (``shared.rpc.interceptors.propagation``)
reads it, so deadlines shrink hop by hop and tenant / request id / trace context
travel with the message without call sites passing anything::

    info = current()
    info.tenant, info.request_id, info.remaining()
"""

from __future__ import annotations

import contextvars
import time

from clawmesh.shared import metadata as md


class CallInfo:
    """The inbound call being served.

    ``metadata`` is the call's metadata as received (pairs, or a mapping);
    the dict view and the propagated subset are built once, on first use.
    """

    __slots__ = ("method", "deadline", "_metadata", "_headers", "_propagated")

    def __init__(self, method: str, deadline: float | None, metadata=()) -> None:
        self.method = method
        self.deadline = deadline  # time.monotonic() value; None when the caller set none
        self._metadata = metadata
        self._headers: dict[str, str] | None = metadata if isinstance(metadata, dict) else None
        self._propagated: tuple[tuple[str, str], ...] | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = md.to_dict(self._metadata)
        return self._headers

    @property
    def propagated(self) -> tuple[tuple[str, str], ...]:
        """The metadata every outbound call of this call carries (md.PROPAGATED keys)."""
        if self._propagated is None:
            h = self.headers
            self._propagated = tuple((k, h[k]) for k in md.PROPAGATED if h.get(k))
        return self._propagated

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
