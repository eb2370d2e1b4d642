"""Why a backend call failed, in terms a caller can act on.

    try:
        gen = await backend.generate(turns, "", 0)
    except RateLimited as exc:
        await asyncio.sleep(exc.retry_after_s or 1.0)

Every error has ``retry_after_s`` (None when unknown) and ``is_fault``: whether it
counts against the backend (a circuit breaker, health). Only ``BadRequest`` is not
a fault: the request was wrong, not the backend.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime


class BackendError(Exception):
    """A backend call failed."""

    is_fault = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class RateLimited(BackendError):
    """HTTP 429: the backend's quota is spent for now."""


class BackendUnavailable(BackendError):
    """5xx, a refused or broken connection, or credentials the backend rejects."""


class BackendTimeout(BackendError):
    """A phase of the call took too long."""


class FirstTokenTimeout(BackendTimeout):
    """No first token within ``first_token_timeout_s`` of sending the request."""


class StallTimeout(BackendTimeout):
    """A stream stopped: no chunk within ``stall_timeout_s`` of the previous one."""


class TotalTimeout(BackendTimeout):
    """The whole call took longer than ``total_timeout_s``."""


class MalformedResponse(BackendError):
    """The backend answered with something that is not a chat completion."""


class BadRequest(BackendError):
    """HTTP 4xx (not 429): the backend rejected the request; ``field`` names it when known."""

    is_fault = False

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP-date) as seconds from ``now``; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None
