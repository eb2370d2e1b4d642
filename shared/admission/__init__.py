"""Admission control: who runs now, who waits, who is turned away under load.

Plain asyncio building blocks with an injected clock, no gRPC types (the ingest
interceptor is a thin adapter over them):

- :class:`AdmissionController` — a concurrency limit with a bounded wait queue
  ordered by priority class (CRITICAL > HIGH > NORMAL > LOW > BACKGROUND, the
  numbers of ``clawmesh.common.v1.Priority``), FIFO within a class. A full queue
  sheds from the bottom: a newcomer evicts the newest waiter of the lowest class
  present if that class is lower than its own (the evicted call gets
  :class:`Shed`), otherwise the newcomer gets :class:`QueueFull` at once. A
  queued call whose deadline can no longer be met (deadline − expected service
  time, an EWMA of observed latencies, is in the past) is refused with
  :class:`DeadlineUnmeetable` instead of being served late; the same check is
  made on arrival, even when a permit is free. A waiter that is cancelled
  leaves the queue; one cancelled after its grant gives the permit back.
- :class:`AIMDLimit` / :class:`GradientLimit` — adaptive limits fed by the
  latency between acquire and release; the controller's permits follow them.
- :class:`WorkerPool` — priority queue of coroutine functions over the same
  controller, per-task timeout, ``await pool.drain(timeout)``.

All rejections subclass :class:`clawmesh.shared.errors.ResourceExhausted`, so the
error interceptor answers RESOURCE_EXHAUSTED with a RetryInfo of
``exc.retry_after_s`` and a QuotaFailure naming ``admission:<reason>:<class>``.

Usage (a server interceptor would do this around the handler)::

    from clawmesh.shared.admission import AdmissionController, AIMDLimit, Priority, Reason

    admission = AdmissionController(
        AIMDLimit(initial=32, min_limit=4, max_limit=256, target_latency_s=0.25),
        max_queue=128,
    )

    async def handle(request, context):
        deadline = None
        if context.time_remaining() is not None:          # gRPC: seconds left
            deadline = admission.clock() + context.time_remaining()
        # request.message.priority is the proto enum int (0 counts as NORMAL)
        async with admission.admit(request.message.priority, deadline=deadline):
            return await core(request)                     # latency feeds the AIMD limit
        # Shed / QueueFull / DeadlineUnmeetable propagate -> RESOURCE_EXHAUSTED + RetryInfo

    admission.stats()   # limit, in_use, available_permits, waiting_count, load_percentage, rejected
    admission.rejected_count[(Reason.SHED, Priority.BACKGROUND)]   # by reason and class

Lower level, when the grant and the release are not in one block (the pool does
this): ``permit = admission.reserve(priority, deadline)`` raises QueueFull /
DeadlineUnmeetable at once; ``await permit.wait()`` (Shed / DeadlineUnmeetable if
refused while waiting); ``permit.release()`` (or ``permit.cancel()``).

Pool::

    pool = WorkerPool(workers=8, max_queue=256, task_timeout_s=30.0)
    task = pool.submit(summarise, session_id, priority=Priority.BACKGROUND)
    await pool.drain(timeout=10.0)      # on SIGTERM

Everything runs on one event loop; nothing here is thread-safe.
"""

from clawmesh.shared.admission.base import (
    CLASSES,
    MONOTONIC,
    AdmissionRejected,
    Clock,
    Closed,
    DeadlineUnmeetable,
    LatencyEstimate,
    Priority,
    PriorityLike,
    QueueFull,
    QueueTimeout,
    Reason,
    Shed,
)
from clawmesh.shared.admission.controller import AdmissionController
from clawmesh.shared.admission.limits import AIMDLimit, FixedLimit, GradientLimit, Limit
from clawmesh.shared.admission.permit import Permit
from clawmesh.shared.admission.pool import WorkerPool
from clawmesh.shared.admission.queue import PriorityWaitQueue

__all__ = [
    "CLASSES",
    "MONOTONIC",
    "AIMDLimit",
    "AdmissionController",
    "AdmissionRejected",
    "Clock",
    "Closed",
    "DeadlineUnmeetable",
    "FixedLimit",
    "GradientLimit",
    "LatencyEstimate",
    "Limit",
    "Permit",
    "Priority",
    "PriorityLike",
    "PriorityWaitQueue",
    "QueueFull",
    "QueueTimeout",
    "Reason",
    "Shed",
    "WorkerPool",
]
