"""WorkerPool: run coroutine functions with bounded concurrency, by priority.

A thin layer over :class:`AdmissionController`: the pool's workers are its
permits and its queue is the controller's wait queue, so tasks are started by
class then FIFO, the lowest class is shed first when the queue is full, and an
adaptive limit (pass an ``AIMDLimit`` as ``workers``) sizes the pool from the
tasks' processing times.

    pool = WorkerPool(workers=4, max_queue=100, task_timeout_s=5.0)
    fut = pool.submit(summarise, session_id, priority=Priority.LOW)   # raises QueueFull at once
    summary = await fut                       # TimeoutError if it ran over 5 s; Shed if evicted
    ...
    await pool.drain(timeout=10.0)            # no new work; finish what is queued; cancel the rest
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from clawmesh.shared.admission.base import MONOTONIC, Clock, Closed, Priority, PriorityLike
from clawmesh.shared.admission.controller import AdmissionController
from clawmesh.shared.admission.limits import Limit
from clawmesh.shared.admission.permit import Permit

R = TypeVar("R")


class WorkerPool:
    """``workers`` concurrent tasks (an int or an adaptive :class:`Limit`), a priority
    queue of ``max_queue`` waiting tasks, an optional per-task timeout (running
    time only, not queue time), and a graceful :meth:`drain`.

    ``clock`` measures processing times (``avg_processing_time_ms``); the
    timeout itself is enforced by the event loop (``asyncio.timeout``).
    """

    def __init__(
        self,
        workers: int | Limit = 4,
        *,
        max_queue: int = 100,
        task_timeout_s: float | None = None,
        clock: Clock = MONOTONIC,
        controller: AdmissionController | None = None,
    ) -> None:
        self.controller = controller or AdmissionController(workers, max_queue=max_queue, clock=clock)
        self.clock = self.controller.clock
        self.task_timeout_s = task_timeout_s
        self.completed_tasks = 0  # ran to the end (returned or raised), within the timeout
        self.failed_tasks = 0  # of completed_tasks, those that raised
        self.timeout_tasks = 0
        self.cancelled_tasks = 0
        self._total_processing_s = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- API ---------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Awaitable[R]],
        *args: Any,
        priority: PriorityLike = Priority.NORMAL,
        timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> asyncio.Task[R]:
        """Queue ``fn(*args)``; the returned task gives its result.

        Refusals that can be decided now (draining, queue full, deadline
        unmeetable) raise here; a shed or a timeout surfaces from the task.
        ``timeout_s`` overrides the pool's ``task_timeout_s``.
        """
        if self._closed:
            raise Closed(Priority.of(priority), None)
        permit = self.controller.reserve(priority, deadline)
        timeout = self.task_timeout_s if timeout_s is None else timeout_s
        task = asyncio.get_running_loop().create_task(self._run(permit, fn, args, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - a bound on the wait, part of the API
        """Stop taking work, let queued and running tasks finish within ``timeout``
        seconds (None: no limit), cancel whatever is left. True if nothing was cancelled."""
        self._closed = True
        pending = set(self._tasks)
        if not pending:
            return True
        _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return not pending

    @property
    def closed(self) -> bool:
        return self._closed

    # -- stats ---------------------------------------------------------------------

    @property
    def active_workers(self) -> int:
        return self.controller.in_use

    @property
    def queued_tasks(self) -> int:
        return self.controller.waiting_count

    @property
    def avg_processing_time_ms(self) -> float:
        """Mean running time of the completed tasks (0.0 before the first)."""
        if not self.completed_tasks:
            return 0.0
        return 1000.0 * self._total_processing_s / self.completed_tasks

    def stats(self) -> dict[str, Any]:
        return {
            "active_workers": self.active_workers,
            "queued_tasks": self.queued_tasks,
            "completed_tasks": self.completed_tasks,
            "failed_tasks": self.failed_tasks,
            "timeout_tasks": self.timeout_tasks,
            "cancelled_tasks": self.cancelled_tasks,
            "avg_processing_time_ms": self.avg_processing_time_ms,
            "workers": self.controller.limit,
        }

    # -- internals -----------------------------------------------------------------

    async def _run(self, permit: Permit, fn: Callable[..., Awaitable[R]], args: tuple,
                   timeout_s: float | None) -> R:
        try:
            await permit.wait()
        except asyncio.CancelledError:
            self.cancelled_tasks += 1
            raise
        started = self.clock()
        limit = asyncio.timeout(timeout_s)
        try:
            async with limit:
                result = await fn(*args)
        except TimeoutError:
            if not limit.expired():  # the task's own TimeoutError: an ordinary failure
                self._finished(started, failed=True)
                permit.release()
                raise
            self.timeout_tasks += 1
            permit.release(dropped=True)
            raise
        except asyncio.CancelledError:
            self.cancelled_tasks += 1
            permit.release(sample=False)
            raise
        except BaseException:
            self._finished(started, failed=True)
            permit.release()
            raise
        self._finished(started, failed=False)
        permit.release()
        return result

    def _finished(self, started: float, *, failed: bool) -> None:
        self.completed_tasks += 1
        self.failed_tasks += failed
        self._total_processing_s += self.clock() - started

