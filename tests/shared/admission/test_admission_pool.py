"""WorkerPool: priority order, shedding, per-task timeout, stats, graceful drain."""

from __future__ import annotations

import asyncio

import pytest

from clawmesh.shared.admission import (
    AdmissionController,
    Closed,
    DeadlineUnmeetable,
    LatencyEstimate,
    Priority,
    QueueFull,
    Shed,
    WorkerPool,
)
from tests.shared.admission.fakes import FakeClock, settle

C, H, N, L, B = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.BACKGROUND


async def _wait(event: asyncio.Event) -> str:
    await event.wait()
    return "done"


async def test_tasks_start_by_priority_then_fifo(clock):
    pool = WorkerPool(workers=1, max_queue=10, clock=clock)
    gate = asyncio.Event()
    order: list[str] = []

    async def record(name):
        order.append(name)
        return name

    blocker = pool.submit(_wait, gate)
    futures = [pool.submit(record, name, priority=prio)
               for name, prio in [("low", L), ("high", H), ("normal-1", N), ("crit", C), ("normal-2", N)]]
    await settle()
    assert pool.active_workers == 1 and pool.queued_tasks == 5
    gate.set()
    assert await blocker == "done"
    assert await asyncio.gather(*futures) == ["low", "high", "normal-1", "crit", "normal-2"]
    assert order == ["crit", "high", "normal-1", "normal-2", "low"]
    assert pool.completed_tasks == 6 and pool.active_workers == 0 and pool.queued_tasks == 0


async def test_full_queue_sheds_the_lowest_and_refuses_at_submit(clock):
    pool = WorkerPool(workers=1, max_queue=1, clock=clock)
    gate = asyncio.Event()
    pool.submit(_wait, gate)
    low = pool.submit(_wait, gate, priority=L)
    high = pool.submit(_wait, gate, priority=H)
    with pytest.raises(Shed):
        await low
    with pytest.raises(QueueFull):
        pool.submit(_wait, gate, priority=N)  # raised here: the coroutine is never made
    gate.set()
    assert await high == "done"
    assert pool.controller.rejected_total() == 2


async def test_deadline_unmeetable_at_submit():
    clock = FakeClock(10.0)
    ctl = AdmissionController(1, clock=clock, service_time=LatencyEstimate(initial_s=1.0))
    pool = WorkerPool(controller=ctl)
    with pytest.raises(DeadlineUnmeetable):
        pool.submit(_wait, asyncio.Event(), deadline=10.5)


async def test_per_task_timeout_frees_the_worker(clock):
    pool = WorkerPool(workers=1, max_queue=10, task_timeout_s=0.01, clock=clock)
    never = asyncio.Event()
    stuck = pool.submit(_wait, never)
    nxt = pool.submit(_wait, never, timeout_s=5.0)  # per-call override
    await settle()
    assert pool.queued_tasks == 1
    with pytest.raises(TimeoutError):
        await stuck
    assert pool.timeout_tasks == 1 and pool.completed_tasks == 0
    await settle()
    assert pool.active_workers == 1 and pool.queued_tasks == 0  # the next one got the worker
    never.set()
    assert await nxt == "done"
    assert pool.active_workers == 0 and pool.completed_tasks == 1 and pool.timeout_tasks == 1


async def test_a_tasks_own_timeout_error_is_a_failure_not_a_timeout(clock):
    pool = WorkerPool(workers=1, task_timeout_s=5.0, clock=clock)

    async def fails():
        raise TimeoutError("backend said so")

    with pytest.raises(TimeoutError):
        await pool.submit(fails)
    assert pool.timeout_tasks == 0 and pool.completed_tasks == 1 and pool.failed_tasks == 1


async def test_avg_processing_time_on_the_fake_clock(clock: FakeClock):
    pool = WorkerPool(workers=2, clock=clock)

    async def work(seconds):
        clock.advance(seconds)
        return seconds

    await asyncio.gather(pool.submit(work, 0.1), pool.submit(work, 0.3))
    assert pool.avg_processing_time_ms == pytest.approx(200.0)
    assert pool.stats()["completed_tasks"] == 2


async def test_drain_finishes_queued_work_and_refuses_new(clock):
    pool = WorkerPool(workers=1, max_queue=10, clock=clock)
    gates = [asyncio.Event() for _ in range(3)]
    futures = [pool.submit(_wait, gate) for gate in gates]
    drained = asyncio.create_task(pool.drain())
    await settle()
    assert pool.closed and not drained.done()
    with pytest.raises(Closed) as info:
        pool.submit(_wait, gates[0], priority=H)
    assert info.value.reason.value == "closed"
    for gate in gates:
        gate.set()
    assert await drained is True
    assert [f.result() for f in futures] == ["done"] * 3
    assert pool.completed_tasks == 3 and pool.cancelled_tasks == 0


async def test_drain_timeout_cancels_the_rest_without_leaking_workers(clock):
    pool = WorkerPool(workers=1, max_queue=10, clock=clock)
    never = asyncio.Event()
    running, queued = pool.submit(_wait, never), pool.submit(_wait, never)
    await settle()
    assert await pool.drain(timeout=0.01) is False
    assert running.cancelled() and queued.cancelled()
    assert pool.cancelled_tasks == 2
    assert pool.active_workers == 0 and pool.queued_tasks == 0
    assert pool.controller.available_permits == 1


async def test_drain_of_an_idle_pool(clock):
    pool = WorkerPool(workers=3, clock=clock)
    assert await pool.drain(timeout=0) is True
