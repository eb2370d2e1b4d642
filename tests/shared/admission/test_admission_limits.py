"""AIMD and gradient limits on exact latency series, and the controller's permits
following an adaptive limit under a fake clock."""

from __future__ import annotations

import pytest

from clawmesh.shared.admission import (
    AdmissionController,
    AIMDLimit,
    FixedLimit,
    GradientLimit,
    Limit,
    Priority,
)
from tests.shared.admission.fakes import FakeClock

N = Priority.NORMAL


def test_aimd_series():
    limit = AIMDLimit(initial=10, min_limit=2, max_limit=12, target_latency_s=0.1, backoff_ratio=0.9)
    assert isinstance(limit, Limit)
    series = [
        # (latency, inflight, dropped) -> limit, value
        ((0.05, 10, False), 11, 11.0),  # fast and busy: +1
        ((0.05, 11, False), 12, 12.0),
        ((0.05, 12, False), 12, 12.0),  # capped at max_limit
        ((0.10, 12, False), 12, 12.0),  # at the target is not over it
        ((0.20, 12, False), 10, 10.8),  # slow: × 0.9
        ((0.05, 5, False), 10, 10.8),  # fast but under half used: no growth
        ((0.05, 6, True), 9, 9.72),  # dropped: × 0.9 whatever the latency
    ]
    for (latency, inflight, dropped), expected_limit, expected_value in series:
        assert limit.on_sample(latency, inflight, dropped) == expected_limit
        assert limit.value == pytest.approx(expected_value)
    for _ in range(30):
        limit.on_sample(1.0, 9, False)
    assert limit.limit == 2 and limit.value == 2.0  # floored at min_limit


def test_gradient_series_with_a_target():
    limit = GradientLimit(initial=10, min_limit=1, max_limit=100, target_latency_s=0.1,
                          tolerance=1.0, smoothing=0.5, queue_size=2)
    series = [
        ((0.100, 10, False), 11, 11.0),  # gradient 1: (10 + 2) smoothed with 10
        ((0.200, 11, False), 9, 9.25),  # gradient 0.5: 11 × .5 + 2 = 7.5 → (11 + 7.5) / 2
        ((0.125, 9, False), 9, 9.325),  # gradient 0.8: 9.25 × .8 + 2 = 9.4 → (9.25 + 9.4) / 2
        ((0.500, 2, False), 9, 9.325),  # app-limited (2 < 9.325 / 2): unchanged
        ((0.010, 9, True), 7, 7.99375),  # dropped: gradient 0.5
        ((1.000, 9, False), 6, 6.9953125),  # gradient clamped at 0.5: (7.99375 + 5.996875) / 2
    ]
    for (latency, inflight, dropped), expected_limit, expected_value in series:
        assert limit.on_sample(latency, inflight, dropped) == expected_limit
        assert limit.value == pytest.approx(expected_value)


def test_gradient_series_with_long_term_reference():
    limit = GradientLimit(initial=10, min_limit=1, max_limit=100, tolerance=1.5, smoothing=0.5,
                          queue_size=2, long_window=3)  # long-term EWMA weight 2 / (3 + 1)
    assert limit.on_sample(0.1, 10, False) == 11  # reference 0.1; gradient 1
    assert limit.long_latency_s == pytest.approx(0.1)
    assert limit.on_sample(0.4, 11, False) == 11  # reference 0.25; gradient 1.5 × .25 / .4
    assert limit.long_latency_s == pytest.approx(0.25)
    assert limit.value == pytest.approx(11.65625)
    assert limit.on_sample(0.05, 11, False) == 12  # reference 0.15 > 2 × 0.05: pulled to 0.1425
    assert limit.long_latency_s == pytest.approx(0.1425)
    assert limit.value == pytest.approx(12.65625)


def test_gradient_min_reference_follows_the_least_latency_of_two_periods():
    limit = GradientLimit(initial=10, min_limit=1, max_limit=100, tolerance=2.0, smoothing=1.0,
                          queue_size=0, long_window=2, reference="min")
    assert limit.on_sample(0.010, 10, False) == 10  # reference 0.010: 2 × .01 / .01 → gradient 1
    assert limit.on_sample(0.040, 10, False) == 5  # reference 0.010: 2 × .01 / .04 = 0.5
    # period 1 ended (min 0.010); period 2 begins
    assert limit.on_sample(0.030, 5, False) == 3  # reference still 0.010: gradient 0.667 → 3.33
    # period 2 ends here (min 0.030): period 1 is forgotten, the backend really got slower
    assert limit.on_sample(0.030, 3, False) == 3  # reference 0.030: gradient 1 (capped at 1)
    assert limit.value == pytest.approx(3.3333333)
    assert limit.on_sample(0.100, 3, False) == 2  # reference 0.030: gradient 0.6: 3.33 × 0.6
    assert limit.value == pytest.approx(2.0)


def test_limit_arguments_are_checked():
    with pytest.raises(ValueError):
        AIMDLimit(initial=5, min_limit=6, max_limit=10)
    with pytest.raises(ValueError):
        AIMDLimit(backoff_ratio=0.3)
    with pytest.raises(ValueError):
        GradientLimit(tolerance=0.5)
    with pytest.raises(ValueError):
        GradientLimit(reference="median")
    with pytest.raises(ValueError):
        FixedLimit(0)


async def test_controller_permits_follow_the_aimd_limit():
    clock = FakeClock(0.0)
    aimd = AIMDLimit(initial=2, min_limit=1, max_limit=4, target_latency_s=1.0, backoff_ratio=0.5)
    ctl = AdmissionController(aimd, max_queue=10, clock=clock)
    p1, p2 = ctl.reserve(N), ctl.reserve(N)  # in flight at grant: 1, 2
    w1, w2 = ctl.reserve(N), ctl.reserve(N)
    assert ctl.waiting_count == 2
    clock.advance(0.5)
    p1.release()  # 0.5 s ≤ 1 s, inflight 1 × 2 ≥ 2: limit 3 → both waiters start
    assert ctl.limit == 3 and ctl.in_use == 3 and w1.state == w2.state == "granted"
    assert w2.inflight == 3
    clock.advance(2.0)
    p2.release()  # 2.5 s > 1 s: 3 × 0.5 = 1.5 → 1
    assert ctl.limit == 1 and ctl.in_use == 2
    assert ctl.available_permits == 0 and ctl.load_percentage == 200.0
    late = ctl.reserve(N)
    assert late.state == "waiting"
    w1.release()  # 2.0 s since its grant at 0.5: slow, floored at 1; one still in use
    assert ctl.limit == 1 and late.state == "waiting"
    w2.release()
    assert late.state == "granted" and ctl.in_use == 1
    assert ctl.service_time.samples == 4


async def test_fixed_limit_changed_by_hand(clock):
    fixed = FixedLimit(1)
    ctl = AdmissionController(fixed, clock=clock)
    ctl.reserve(N)
    waiter = ctl.reserve(N)
    fixed.set(2)
    ctl.refresh()
    assert waiter.state == "granted" and ctl.in_use == 2
