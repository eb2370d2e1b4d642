"""AdmissionController: a concurrency limit with a bounded, priority-ordered wait queue.

Single event loop, no locks: every state change happens synchronously between
awaits (granting, shedding, refusing), so the bookkeeping is exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from clawmesh.shared.admission.base import (
    MONOTONIC,
    AdmissionRejected,
    Clock,
    DeadlineUnmeetable,
    LatencyEstimate,
    Priority,
    PriorityLike,
    QueueFull,
    QueueTimeout,
    Reason,
    Shed,
)
from clawmesh.shared.admission.limits import FixedLimit, Limit
from clawmesh.shared.admission.permit import (
    CANCELLED,
    GRANTED,
    REJECTED,
    RELEASED,
    WAITING,
    Permit,
    _Admission,
)
from clawmesh.shared.admission.queue import PriorityWaitQueue

_MIN_TIMER_S = 0.001


class AdmissionController:
    """A concurrency limit with a bounded wait queue ordered by priority, then FIFO.

    ``limit``: an int (fixed) or a :class:`Limit` (e.g. AIMDLimit) that the number
    of permits follows. ``max_queue``: waiters beyond the running calls (0: none).
    ``clock``: monotonic seconds; deadlines are on it and latencies are measured
    with it. ``service_time``: the expected-service-time estimate (EWMA of the
    observed latencies). ``drop_on``: exceptions that count a call as dropped.
    ``max_wait_s`` / ``max_wait_services``: the longest a call may wait in the
    queue, in seconds and/or in expected service times (the larger of those set;
    neither: up to its deadline); a newcomer whose expected wait (the waiters of its class or higher
    ahead of it ÷ the limit × the expected service time) is longer is refused at
    once, and a waiter still queued after it is refused then (``QueueTimeout``).

    Waiters whose deadline becomes unmeetable (or whose wait bound passes) are
    refused on every arrival and release, by :meth:`sweep`, and by a loop timer
    armed at each one's latest start (delay computed on ``clock``; with a fake
    clock, call :meth:`sweep`).
    """

    def __init__(
        self,
        limit: int | Limit = 10,
        *,
        max_queue: int = 100,
        clock: Clock = MONOTONIC,
        service_time: LatencyEstimate | None = None,
        min_retry_after_s: float = 0.05,
        max_retry_after_s: float = 30.0,
        drop_on: tuple[type[BaseException], ...] = (TimeoutError,),
        max_wait_s: float | None = None,
        max_wait_services: float | None = None,
    ) -> None:
        if (max_wait_s is not None and max_wait_s < 0) or (
                max_wait_services is not None and max_wait_services <= 0):
            raise ValueError("max_wait_s must be >= 0 and max_wait_services > 0")
        self.max_wait_s = max_wait_s
        self.max_wait_services = max_wait_services
        self.limiter: Limit = FixedLimit(limit) if isinstance(limit, int) else limit
        self.clock = clock
        self.service_time = service_time if service_time is not None else LatencyEstimate()
        self.min_retry_after_s = min_retry_after_s
        self.max_retry_after_s = max_retry_after_s
        self.drop_on = drop_on
        self._queue: PriorityWaitQueue[Permit] = PriorityWaitQueue(max_queue)
        self._in_use = 0
        self._with_deadline = 0  # waiters with a latest start (skip sweeps when 0)
        self._rejected: Counter[tuple[Reason, Priority]] = Counter()

    # -- the API ---------------------------------------------------------------

    def admit(self, priority: PriorityLike = Priority.NORMAL, deadline: float | None = None) -> _Admission:
        """``async with controller.admit(priority, deadline) as permit:`` — see the package doc."""
        return _Admission(self, priority, deadline)

    def reserve(self, priority: PriorityLike = Priority.NORMAL, deadline: float | None = None) -> Permit:
        """Synchronous part of admission: a granted or waiting :class:`Permit`.

        Raises :class:`QueueFull` or :class:`DeadlineUnmeetable` at once; may shed
        a lower waiter. ``await permit.wait()`` then ``permit.release()``.
        """
        prio = Priority.of(priority)
        now = self.clock()
        if self._with_deadline:
            self._sweep(now)
        if deadline is not None and self._unmeetable(deadline, now):
            raise self._rejection(DeadlineUnmeetable, prio)
        permit = Permit(self, prio, deadline, now)
        if not self._queue and self._in_use < self.limiter.limit:
            self._start(permit)
            return permit
        max_wait = self.max_wait()
        if max_wait is not None:
            ahead = self._queue.ahead_of(prio)
            if (ahead + 1) / self.limiter.limit * self.service_time.value_s > max_wait:
                raise self._rejection(QueueTimeout, prio)
            permit.wait_until = now + max_wait
        action, victim = self._queue.admission(prio)
        if action == "refuse":
            raise self._rejection(QueueFull, prio)
        if victim is not None:
            self._remove(victim)
            self._reject(victim, Shed)
        permit._future = asyncio.get_running_loop().create_future()
        self._queue.push(permit)
        if permit.bounded:
            self._with_deadline += 1
            self._arm(permit, now)
        return permit

    def refresh(self) -> None:
        """Grant waiters after the limiter was changed by hand (``FixedLimit.set``)."""
        if self._with_deadline:
            self._sweep(self.clock())
        self._grant()

    def sweep(self) -> int:
        """Refuse every waiter whose deadline can no longer be met or wait bound passed; how many."""
        return self._sweep(self.clock())

    # -- stats -----------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self.limiter.limit

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def available_permits(self) -> int:
        return max(0, self.limiter.limit - self._in_use)

    @property
    def waiting_count(self) -> int:
        return len(self._queue)

    @property
    def max_queue(self) -> int:
        return self._queue.capacity

    def waiting_by_class(self) -> dict[Priority, int]:
        return self._queue.counts()

    @property
    def load_percentage(self) -> float:
        """Permits in use as a percentage of the limit (above 100 after the limit drops)."""
        return 100.0 * self._in_use / self.limiter.limit

    @property
    def rejected_count(self) -> Counter[tuple[Reason, Priority]]:
        """Rejections by (reason, class); a copy, missing keys count 0."""
        return Counter(self._rejected)

    def rejected_total(self, reason: Reason | None = None, priority: PriorityLike | None = None) -> int:
        prio = None if priority is None else Priority.of(priority)
        return sum(n for (r, p), n in self._rejected.items()
                   if (reason is None or r == reason) and (prio is None or p == prio))

    @property
    def expected_service_s(self) -> float:
        return self.service_time.value_s

    def max_wait(self) -> float | None:
        """The queue's wait bound now, seconds (None: none)."""
        bounds = [] if self.max_wait_s is None else [self.max_wait_s]
        if self.max_wait_services is not None:
            bounds.append(self.max_wait_services * self.service_time.value_s)
        return max(bounds) if bounds else None

    def retry_after_s(self) -> float:
        """The hint given with a rejection: expected service × (queue rounds + 1), clamped."""
        rounds = len(self._queue) / self.limiter.limit + 1.0
        hint = self.service_time.value_s * rounds
        return min(self.max_retry_after_s, max(self.min_retry_after_s, hint))

    def stats(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "in_use": self._in_use,
            "available_permits": self.available_permits,
            "waiting_count": self.waiting_count,
            "load_percentage": self.load_percentage,
            "expected_service_s": self.expected_service_s,
            "rejected": {f"{r.value}:{p.label}": n for (r, p), n in sorted(self._rejected.items())},
        }

    # -- internals ---------------------------------------------------------------

    def _unmeetable(self, deadline: float, now: float) -> bool:
        return deadline - self.service_time.value_s < now

    def _expired(self, permit: Permit, now: float) -> type[AdmissionRejected] | None:
        """Why a waiter must be refused now (None: it may wait on)."""
        if permit.deadline is not None and self._unmeetable(permit.deadline, now):
            return DeadlineUnmeetable
        if permit.wait_until is not None and permit.wait_until < now:
            return QueueTimeout
        return None

    def _latest_start(self, permit: Permit) -> float:
        bounds = [permit.deadline - self.service_time.value_s] if permit.deadline is not None else []
        if permit.wait_until is not None:
            bounds.append(permit.wait_until)
        return min(bounds)

    def _rejection(self, cls: type[AdmissionRejected], priority: Priority) -> AdmissionRejected:
        self._rejected[(cls.reason, priority)] += 1
        return cls(priority, self.retry_after_s())

    def _reject(self, permit: Permit, cls: type[AdmissionRejected]) -> None:
        """A waiter (already out of the queue) is refused; its wait() raises."""
        permit.state = REJECTED
        permit._error = self._rejection(cls, permit.priority)
        if permit._future is not None and not permit._future.done():
            permit._future.set_result(None)

    def _start(self, permit: Permit) -> None:
        self._in_use += 1
        permit.state = GRANTED
        permit.granted_at = self.clock()
        permit.inflight = self._in_use
        if permit._future is not None and not permit._future.done():
            permit._future.set_result(None)

    def _remove(self, permit: Permit) -> None:
        """Out of the queue (if there) and its deadline timer off."""
        if self._queue.remove(permit) and permit.bounded:
            self._with_deadline -= 1
        if permit._timer is not None:
            permit._timer.cancel()
            permit._timer = None

    def _grant(self) -> None:
        now: float | None = None
        while self._queue and self._in_use < self.limiter.limit:
            permit = self._queue.pop()
            if permit.bounded:
                self._with_deadline -= 1
                if permit._timer is not None:
                    permit._timer.cancel()
                    permit._timer = None
                now = self.clock() if now is None else now
                why = self._expired(permit, now)
                if why is not None:
                    self._reject(permit, why)
                    continue
            self._start(permit)

    def _release(self, permit: Permit, *, sample: bool, dropped: bool) -> None:
        permit.state = RELEASED
        self._in_use -= 1
        now = self.clock()
        if sample and permit.granted_at is not None:
            latency = now - permit.granted_at
            self.service_time.observe(latency)
            self.limiter.on_sample(latency, permit.inflight, dropped)
        if self._with_deadline:
            self._sweep(now)
        self._grant()

    def _abandon(self, permit: Permit) -> None:
        if permit.state == WAITING:
            self._remove(permit)
            permit.state = CANCELLED
            if permit._future is not None and not permit._future.done():
                permit._future.cancel()
        elif permit.state == GRANTED:
            self._release(permit, sample=False, dropped=False)

    def _sweep(self, now: float) -> int:
        doomed = [(p, why) for p in self._queue if p.bounded and (why := self._expired(p, now))]
        for permit, why in doomed:
            self._remove(permit)
            self._reject(permit, why)
        return len(doomed)

    def _arm(self, permit: Permit, now: float) -> None:
        """Wake at the waiter's latest start, so it is refused on time without traffic."""
        delay = self._latest_start(permit) - now
        loop = asyncio.get_running_loop()
        permit._timer = loop.call_later(max(delay, _MIN_TIMER_S), self._on_timer, permit)

    def _on_timer(self, permit: Permit) -> None:
        permit._timer = None
        if permit.state != WAITING:
            return
        now = self.clock()
        why = self._expired(permit, now)
        if why is not None:
            self._remove(permit)
            self._reject(permit, why)
        else:
            self._arm(permit, now)
