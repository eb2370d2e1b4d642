"""Priority classes, the clock type, rejection reasons and the admission exceptions.

The exceptions subclass :class:`clawmesh.shared.errors.ResourceExhausted`, so the
server's error interceptor turns them into RESOURCE_EXHAUSTED with a RetryInfo
(``retry_after_s``) and a QuotaFailure whose subject names the reason and class
(``admission:shed:background``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from clawmesh.shared.errors import ResourceExhausted

Clock = Callable[[], float]
"""Monotonic seconds. Deadlines passed to the controller are on this clock."""

MONOTONIC: Clock = time.monotonic


class Priority(enum.IntEnum):
    """The five classes of ``clawmesh.common.v1.Priority``, same numbers.

    A smaller number is a higher class: CRITICAL (1) is served first and shed
    last, BACKGROUND (5) is shed first.
    """

    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4
    BACKGROUND = 5

    @classmethod
    def of(cls, value: int | str | Priority) -> Priority:
        """A proto enum value (0 = UNSPECIFIED counts as NORMAL), a member or a name.

        Names may carry the proto prefix and any case: ``"PRIORITY_HIGH"``, ``"high"``.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            name = value.strip().upper().removeprefix("PRIORITY_")
            if name == "UNSPECIFIED":
                return cls.NORMAL
            try:
                return cls[name]
            except KeyError:
                raise ValueError(f"unknown priority {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            if value == 0:
                return cls.NORMAL
            return cls(value)
        raise TypeError(f"priority must be an int or a name, not {type(value).__name__}")

    @property
    def label(self) -> str:
        """Lower-case name, as used in messages, subjects and metrics (``background``)."""
        return self.name.lower()


PriorityLike = int | str | Priority

# Highest class first.
CLASSES: tuple[Priority, ...] = tuple(sorted(Priority))


class Reason(enum.StrEnum):
    """Why a call was not admitted (the keys of ``rejected_count``)."""

    SHED = "shed"  # was waiting; evicted by a newcomer of a higher class
    QUEUE_FULL = "queue_full"  # newcomer refused: queue full of its class or higher
    DEADLINE_UNMEETABLE = "deadline_unmeetable"  # deadline − expected service time has passed
    QUEUE_TIMEOUT = "queue_timeout"  # would wait (or has waited) longer than the queue's max wait
    CLOSED = "closed"  # the pool is draining


_DESCRIPTIONS = {
    Reason.SHED: "shed from the wait queue by a higher-priority request",
    Reason.QUEUE_FULL: "admission queue is full of requests of this class or higher",
    Reason.DEADLINE_UNMEETABLE: "deadline cannot be met given the expected service time",
    Reason.QUEUE_TIMEOUT: "admission queue wait would exceed its bound",
    Reason.CLOSED: "not accepting work: draining",
}


class AdmissionRejected(ResourceExhausted):
    """A call that was not admitted. Maps to RESOURCE_EXHAUSTED + RetryInfo.

    Attributes: ``reason`` (:class:`Reason`), ``priority`` (:class:`Priority`),
    ``retry_after_s`` (a hint for RetryInfo), ``message`` (human-readable).
    """

    reason: Reason = Reason.QUEUE_FULL

    def __init__(self, priority: Priority, retry_after_s: float | None, detail: str = "") -> None:
        self.priority = priority
        text = f"{_DESCRIPTIONS[self.reason]} ({self.reason.value}, priority {priority.label}"
        text += f"; {detail})" if detail else ")"
        if retry_after_s is not None:
            text += f"; retry after {retry_after_s:.3g}s"
        super().__init__(text, retry_after_s, subject=f"admission:{self.reason.value}:{priority.label}")


class Shed(AdmissionRejected):
    """A waiting call evicted from the queue by a newcomer of a higher class."""

    reason = Reason.SHED


class QueueFull(Shed):
    """A newcomer refused at once: the queue is full and nothing lower waits.

    A subclass of :class:`Shed`: both mean "dropped for load, retry later".
    """

    reason = Reason.QUEUE_FULL


class DeadlineUnmeetable(AdmissionRejected):
    """Refused rather than served late: deadline − expected service time is past."""

    reason = Reason.DEADLINE_UNMEETABLE


class QueueTimeout(Shed):
    """Refused for load: its expected (or actual) wait in the queue exceeds ``max_wait_s``.

    A queue is a buffer for bursts, not a place to serve calls late: a call that
    would wait longer than the bound is told to come back, at once.
    """

    reason = Reason.QUEUE_TIMEOUT


class Closed(AdmissionRejected):
    """Submitted to a worker pool that is draining."""

    reason = Reason.CLOSED


class LatencyEstimate:
    """Expected service time: an exponentially weighted mean of observed latencies.

    ``initial_s`` is the estimate before any sample (0: assume instant service;
    the first sample then becomes the estimate). Each sample moves the estimate
    by ``alpha`` of the difference.
    """

    def __init__(self, initial_s: float = 0.0, alpha: float = 0.2) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if initial_s < 0:
            raise ValueError("initial_s must be >= 0")
        self.alpha = alpha
        self.value_s = initial_s
        self.samples = 0

    def observe(self, latency_s: float) -> None:
        latency_s = max(latency_s, 0.0)
        if self.samples == 0 and self.value_s == 0.0:
            self.value_s = latency_s
        else:
            self.value_s += self.alpha * (latency_s - self.value_s)
        self.samples += 1
