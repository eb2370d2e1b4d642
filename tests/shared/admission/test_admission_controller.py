"""AdmissionController: priority order, shedding from the bottom, deadlines,
cancellation, stats, and the status the edge builds from a rejection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from clawmesh.common.v1 import common_pb2
from clawmesh.shared.admission import (
    AdmissionController,
    AdmissionRejected,
    DeadlineUnmeetable,
    LatencyEstimate,
    Priority,
    QueueFull,
    QueueTimeout,
    Reason,
    Shed,
)
from clawmesh.shared.errors import ResourceExhausted, status_of
from tests.shared.admission.fakes import FakeClock, settle

C, H, N, L, B = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.BACKGROUND


def test_priority_maps_the_proto_enum():
    assert Priority.of(common_pb2.PRIORITY_CRITICAL) is C
    assert Priority.of(common_pb2.PRIORITY_BACKGROUND) is B
    assert Priority.of(common_pb2.PRIORITY_UNSPECIFIED) is N
    assert Priority.of("PRIORITY_LOW") is L and Priority.of("high") is H
    assert [p.value for p in Priority] == [1, 2, 3, 4, 5]
    assert C < H < N < L < B  # smaller number: higher class
    with pytest.raises(ValueError):
        Priority.of(9)
    with pytest.raises(ValueError):
        Priority.of("urgent")


async def test_admission_order_is_priority_then_fifo(clock):
    ctl = AdmissionController(1, max_queue=10, clock=clock)
    holder = ctl.reserve(N)
    arrivals = [("low-1", L), ("normal-1", N), ("crit-1", C), ("bg-1", B), ("normal-2", N),
                ("high-1", H), ("crit-2", C), ("low-2", L)]
    order: list[str] = []

    async def call(name, prio):
        async with ctl.admit(prio):
            order.append(name)

    tasks = []
    for name, prio in arrivals:
        tasks.append(asyncio.create_task(call(name, prio)))
        await settle()
    assert ctl.waiting_count == len(arrivals) and ctl.in_use == 1
    assert ctl.waiting_by_class() == {C: 2, H: 1, N: 2, L: 2, B: 1}
    holder.release()
    await asyncio.gather(*tasks)
    assert order == ["crit-1", "crit-2", "high-1", "normal-1", "normal-2", "low-1", "low-2", "bg-1"]
    assert ctl.in_use == 0 and ctl.available_permits == 1


async def test_runs_at_once_when_a_permit_is_free(clock):
    ctl = AdmissionController(2, max_queue=0, clock=clock)
    async with ctl.admit(B) as first, ctl.admit(common_pb2.PRIORITY_LOW) as second:
        assert first.state == second.state == "granted"
        assert ctl.available_permits == 0 and ctl.load_percentage == 100.0
        with pytest.raises(QueueFull):  # no queue at all
            async with ctl.admit(C):
                pass
    assert ctl.available_permits == 2 and ctl.load_percentage == 0.0


async def test_sheds_background_then_low_then_normal(clock):
    ctl = AdmissionController(1, max_queue=3, clock=clock)
    ctl.reserve(C)  # holds the only permit
    bg, low, normal = ctl.reserve(B), ctl.reserve(L), ctl.reserve(N)
    shed: list[Priority] = []
    for newcomer in (H, H, H):
        before = [p for p in (bg, low, normal) if p.state == "waiting"]
        ctl.reserve(newcomer)
        after = [p for p in (bg, low, normal) if p.state == "waiting"]
        (victim,) = set(before) - set(after)
        shed.append(victim.priority)
    assert shed == [B, L, N]
    for permit in (bg, low, normal):
        with pytest.raises(Shed) as info:
            await permit.wait()
        assert info.value.reason is Reason.SHED and not isinstance(info.value, QueueFull)
        assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    # Full of HIGH: HIGH and lower newcomers are refused at once; waiters stay.
    for newcomer in (H, N, B):
        with pytest.raises(QueueFull):
            ctl.reserve(newcomer)
    assert ctl.waiting_by_class()[H] == 3
    assert ctl.rejected_count[(Reason.SHED, B)] == 1
    assert ctl.rejected_count[(Reason.SHED, L)] == 1
    assert ctl.rejected_count[(Reason.SHED, N)] == 1
    assert ctl.rejected_total(Reason.QUEUE_FULL) == 3
    assert ctl.rejected_total(priority=H) == 1 and ctl.rejected_total() == 6


async def test_newest_of_the_lowest_class_is_shed(clock):
    ctl = AdmissionController(1, max_queue=3, clock=clock)
    ctl.reserve(N)
    old_low, new_low, crit = ctl.reserve(L), ctl.reserve(L), ctl.reserve(C)
    ctl.reserve(N)
    assert new_low.state == "rejected" and old_low.state == "waiting" and crit.state == "waiting"


async def test_critical_never_shed_while_lower_classes_wait(clock):
    ctl = AdmissionController(1, max_queue=4, clock=clock)
    ctl.reserve(N)
    crits = [ctl.reserve(C) for _ in range(3)]
    low = ctl.reserve(L)
    newcomer = ctl.reserve(C)  # evicts the LOW, not a CRITICAL
    assert low.state == "rejected"
    assert all(p.state == "waiting" for p in [*crits, newcomer])
    # Queue full of CRITICAL only: a CRITICAL newcomer is refused, waiters are kept.
    with pytest.raises(QueueFull):
        ctl.reserve(C)
    assert ctl.waiting_by_class()[C] == 4 and ctl.rejected_total(priority=C) == 1


async def test_critical_never_waits_behind_a_lower_class(clock):
    ctl = AdmissionController(1, max_queue=10, clock=clock)
    holder = ctl.reserve(N)
    lower = [ctl.reserve(p) for p in (H, N, L, B)]
    crit = ctl.reserve(C)
    holder.release()
    assert crit.state == "granted" and all(p.state == "waiting" for p in lower)


async def test_deadline_unmeetable_refused_at_arrival_and_in_queue(clock: FakeClock):
    ctl = AdmissionController(1, max_queue=10, clock=clock, service_time=LatencyEstimate(initial_s=2.0))
    clock.now = 100.0
    # Already too late on arrival: 101.5 − 2 < 100, even with a free permit.
    with pytest.raises(DeadlineUnmeetable) as info:
        ctl.reserve(N, deadline=101.5)
    assert info.value.reason is Reason.DEADLINE_UNMEETABLE
    holder = ctl.reserve(N, deadline=102.0)  # latest start 100.0: not in the past
    assert holder.state == "granted"
    soon = ctl.reserve(H, deadline=104.0)  # latest start 102
    later = ctl.reserve(N, deadline=105.0)  # latest start 103
    no_deadline = ctl.reserve(B)
    clock.advance(2.5)  # 102.5: `soon` can no longer finish in time
    assert ctl.sweep() == 1
    assert soon.state == "rejected" and later.state == "waiting"
    with pytest.raises(DeadlineUnmeetable):
        await soon.wait()
    clock.advance(1.0)  # 103.5: `later` is doomed too; found lazily at the next release
    holder.release(sample=False)
    assert later.state == "rejected" and no_deadline.state == "granted"
    assert ctl.rejected_count[(Reason.DEADLINE_UNMEETABLE, N)] == 2
    assert ctl.rejected_count[(Reason.DEADLINE_UNMEETABLE, H)] == 1


async def test_queue_wait_bound_refuses_at_arrival_and_in_queue(clock: FakeClock):
    ctl = AdmissionController(2, max_queue=10, clock=clock, max_wait_s=1.5,
                              service_time=LatencyEstimate(initial_s=1.0))
    holders = [ctl.reserve(N), ctl.reserve(N)]  # both permits taken: newcomers queue
    first = ctl.reserve(N)  # expected wait (0 + 1) / 2 × 1.0 = 0.5 s
    second = ctl.reserve(N)  # (1 + 1) / 2 = 1.0 s
    third = ctl.reserve(N)  # (2 + 1) / 2 = 1.5 s: at the bound, still queued
    with pytest.raises(QueueTimeout) as info:  # (3 + 1) / 2 = 2.0 s > 1.5: refused at once
        ctl.reserve(N)
    assert info.value.reason is Reason.QUEUE_TIMEOUT and ctl.waiting_count == 3
    crit = ctl.reserve(C)  # nothing of its class or higher ahead: 0.5 s
    assert [p.state for p in (first, second, third, crit)] == ["waiting"] * 4
    holders[0].release(sample=False)  # crit goes first
    assert crit.state == "granted"
    clock.advance(1.6)  # everyone still queued has waited past the bound
    assert ctl.sweep() == 3
    for waiter in (first, second, third):
        with pytest.raises(QueueTimeout):
            await waiter.wait()
    assert ctl.rejected_count[(Reason.QUEUE_TIMEOUT, N)] == 4
    status = status_of(info.value)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "admission:queue_timeout:normal" in str(status)


async def test_queue_wait_bound_timer_refuses_without_traffic():
    ctl = AdmissionController(1, max_queue=10, max_wait_s=0.02)  # real monotonic clock
    holder = ctl.reserve(N)
    waiter = ctl.reserve(N)  # no deadline: only the wait bound limits it
    with pytest.raises(QueueTimeout):
        await waiter.wait()
    assert ctl.waiting_count == 0
    holder.release()


async def test_expected_service_time_comes_from_observed_latency(clock: FakeClock):
    ctl = AdmissionController(1, clock=clock, service_time=LatencyEstimate(alpha=0.5))
    for seconds in (4.0, 2.0):
        async with ctl.admit():
            clock.advance(seconds)
    assert ctl.expected_service_s == pytest.approx(3.0)  # 4, then 4 + 0.5 × (2 − 4)
    with pytest.raises(DeadlineUnmeetable):
        ctl.reserve(N, deadline=clock.now + 2.9)
    ctl.reserve(N, deadline=clock.now + 3.0).release()


async def test_deadline_timer_refuses_a_waiter_without_traffic():
    ctl = AdmissionController(1, max_queue=10)  # real monotonic clock
    holder = ctl.reserve(N)
    waiter = ctl.reserve(N, deadline=ctl.clock() + 0.02)
    with pytest.raises(DeadlineUnmeetable):
        await waiter.wait()  # the loop timer fires at the latest start
    assert ctl.waiting_count == 0
    holder.release()
    assert ctl.in_use == 0


async def test_cancelled_waiter_leaves_the_queue(clock):
    ctl = AdmissionController(1, max_queue=10, clock=clock)
    holder = ctl.reserve(N)
    entered = []

    async def call(name):
        async with ctl.admit(N):
            entered.append(name)

    first, second = asyncio.create_task(call("first")), asyncio.create_task(call("second"))
    await settle()
    assert ctl.waiting_count == 2
    first.cancel()
    await settle()
    assert first.cancelled() and ctl.waiting_count == 1 and ctl.in_use == 1
    holder.release()
    await second
    assert entered == ["second"] and ctl.in_use == 0 and ctl.available_permits == 1


async def test_cancel_after_grant_before_resume_gives_the_permit_back(clock):
    ctl = AdmissionController(1, max_queue=10, clock=clock)
    holder = ctl.reserve(N)
    task = asyncio.create_task(ctl.admit(N).__aenter__())
    await settle()
    holder.release()  # granted synchronously: counted in use before the task resumes
    assert ctl.in_use == 1 and ctl.waiting_count == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctl.in_use == 0 and ctl.available_permits == 1


async def test_cancel_inside_the_block_releases_without_a_sample(clock: FakeClock):
    ctl = AdmissionController(1, clock=clock)
    started = asyncio.Event()

    async def call():
        async with ctl.admit(N):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    clock.advance(50.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert ctl.in_use == 0 and ctl.service_time.samples == 0


async def test_rejections_map_to_resource_exhausted_with_retry_info(clock: FakeClock):
    ctl = AdmissionController(1, max_queue=3, clock=clock, service_time=LatencyEstimate(initial_s=0.2))
    ctl.reserve(N)
    for _ in range(3):
        ctl.reserve(N)
    with pytest.raises(QueueFull) as info:
        ctl.reserve(L)
    exc = info.value
    assert isinstance(exc, ResourceExhausted) and isinstance(exc, AdmissionRejected)
    # expected service 0.2 s × (3 waiting / 1 permit + 1)
    assert exc.retry_after_s == pytest.approx(0.8)
    assert "queue_full" in exc.message and "low" in exc.message
    status = status_of(exc)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(quota)
    assert retry.retry_delay.ToNanoseconds() == 800_000_000
    assert quota.violations[0].subject == "admission:queue_full:low"


async def test_stats(clock):
    ctl = AdmissionController(4, max_queue=2, clock=clock)
    permits = [ctl.reserve(N) for _ in range(5)]
    stats = ctl.stats()
    assert stats["limit"] == 4 and stats["in_use"] == 4 and stats["waiting_count"] == 1
    assert stats["available_permits"] == 0 and stats["load_percentage"] == 100.0
    for permit in permits:
        permit.release()
        permit.release()  # idempotent
    assert ctl.in_use == 0 and ctl.waiting_count == 0 and ctl.load_percentage == 0.0
