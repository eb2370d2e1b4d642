"""A call's place in an :class:`AdmissionController`, and the ``admit()`` context manager.

States: ``waiting`` (in the queue) → ``granted`` (holds a permit) → ``released``;
or ``waiting`` → ``rejected`` (shed, or its deadline became unmeetable) or
``cancelled`` (left the queue). A permit is counted as in use the moment it is
granted, before its waiter resumes; if the waiter is cancelled in between, the
permit goes back (no leak).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clawmesh.shared.admission.base import AdmissionRejected, Priority, PriorityLike

if TYPE_CHECKING:
    from clawmesh.shared.admission.controller import AdmissionController

WAITING, GRANTED, RELEASED, REJECTED, CANCELLED = "waiting", "granted", "released", "rejected", "cancelled"


class Permit:
    """One call's place: waiting in the queue, then holding a permit until released.

    Inside ``async with controller.admit(...) as permit`` call ``permit.drop()`` to
    report the call as dropped (overload signal for the adaptive limit) or
    ``permit.ignore()`` to keep its latency out of the statistics.
    """

    __slots__ = ("priority", "deadline", "wait_until", "state", "enqueued_at", "granted_at", "inflight",
                 "dropped", "ignored", "_controller", "_future", "_timer", "_error")

    def __init__(self, controller: AdmissionController, priority: Priority, deadline: float | None,
                 now: float) -> None:
        self.priority = priority
        self.deadline = deadline
        self.wait_until: float | None = None  # the controller's max wait, if it has one
        self.state = WAITING
        self.enqueued_at = now
        self.granted_at: float | None = None
        self.inflight = 0
        self.dropped = False
        self.ignored = False
        self._controller = controller
        self._future: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._error: AdmissionRejected | None = None

    def __repr__(self) -> str:
        return f"<Permit {self.priority.label} {self.state} deadline={self.deadline}>"

    @property
    def bounded(self) -> bool:
        """Whether it has a latest start (a deadline or a wait bound) while queued."""
        return self.deadline is not None or self.wait_until is not None

    async def wait(self) -> Permit:
        """Until granted. Raises the rejection if shed or refused while waiting."""
        if self.state == WAITING:
            assert self._future is not None
            try:
                await self._future
            except asyncio.CancelledError:
                self._controller._abandon(self)
                raise
        if self.state == REJECTED:
            assert self._error is not None
            raise self._error
        if self.state == CANCELLED:
            raise asyncio.CancelledError()
        return self

    def drop(self) -> None:
        self.dropped = True

    def ignore(self) -> None:
        self.ignored = True

    def release(self, *, dropped: bool = False, sample: bool = True) -> None:
        """Give the permit back (idempotent); ``sample`` feeds its latency to the limit."""
        if self.state == GRANTED:
            self._controller._release(self, sample=sample and not self.ignored,
                                      dropped=dropped or self.dropped)
        elif self.state == WAITING:
            self._controller._abandon(self)

    def cancel(self) -> None:
        """Leave the queue, or give back a held permit without a latency sample."""
        self._controller._abandon(self)


class _Admission:
    __slots__ = ("_controller", "_priority", "_deadline", "_permit")

    def __init__(self, controller: AdmissionController, priority: PriorityLike,
                 deadline: float | None) -> None:
        self._controller = controller
        self._priority = priority
        self._deadline = deadline
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        self._permit = self._controller.reserve(self._priority, self._deadline)
        return await self._permit.wait()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        permit = self._permit
        if permit is None:
            return
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            permit.release(sample=False)
        else:
            permit.release(dropped=isinstance(exc, self._controller.drop_on))
