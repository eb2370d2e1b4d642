"""Pacers and the worker ticker, as pure functions of elapsed time (exact counts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawmesh.loadtest.config import load_config
from clawmesh.loadtest.schedule import (
    ConstantPacer,
    StepPacer,
    Ticks,
    expected_sent,
    make_pacer,
    share,
    worker_ticks,
)

S = 10**9


def test_constant_pacer_exact():
    p = ConstantPacer(10)
    assert p.pace(0, 0) == (100_000_000, False)  # tick h is due at (h+1)/F
    assert p.pace(250_000_000, 2) == (50_000_000, False)
    assert p.pace(2 * S, 5) == (0, False)  # behind at a whole second: catch up now
    assert expected_sent(ConstantPacer(10), S) == 10
    assert expected_sent(ConstantPacer(10), 2 * S + S // 2) == 25
    assert ConstantPacer(0).pace(123, 10**6) == (0, False)  # unlimited
    assert ConstantPacer(10, max_total=3).pace(0, 3) == (0, True)


def test_step_pacer_with_end():
    p = StepPacer(5, 5, 5 * S, end=20)
    assert p.const_at == 20 * S  # first step strictly above end
    assert [p.rate(t * S) for t in (0, 5, 10, 15, 19, 20, 60)] == [5, 10, 15, 20, 20, 20, 20]
    assert (p.hits(5 * S), p.hits(10 * S), p.hits(20 * S)) == (25.0, 75.0, 250.0)
    counts = [expected_sent(StepPacer(5, 5, 5 * S, end=20), t * S) for t in (1, 5, 10, 20, 25)]
    assert counts == [5, 25, 75, 250, 350]


def test_step_pacer_with_max_duration_derives_end():
    p = StepPacer(10, 10, S, load_duration=3 * S)
    assert (p.const_at, p.end) == (3 * S, 40)
    counts = [expected_sent(StepPacer(10, 10, S, load_duration=3 * S), t * S) for t in range(1, 5)]
    assert counts == [10, 30, 60, 100]


def test_step_pacer_ramps_down_and_respects_total():
    p = StepPacer(20, -5, S, end=5)
    assert [p.rate(t * S) for t in range(6)] == [20, 15, 10, 5, 5, 5]
    assert StepPacer(20, -5, S, end=5, max_total=7).pace(0, 7) == (0, True)


def test_line_schedule_is_a_one_second_step():
    cfg = load_config(None, {"call": "a.B.C", "host": "h:1", "load-schedule": "line",
                             "load-start": 2, "load-step": 2, "load-end": 10, "total": 10**6})
    p = make_pacer(cfg)
    assert p.step_duration == S
    assert [expected_sent(make_pacer(cfg), t * S) for t in (1, 2, 3)] == [2, 6, 12]


def step_cfg(**kw):
    base = {"concurrency-schedule": "step", "concurrency-start": 5, "concurrency-step": 10,
            "concurrency-end": 50, "concurrency-step-duration": S, "concurrency-max-duration": 0,
            "concurrency": 50}
    base.update(kw)
    return base


def test_worker_ticker_const():
    assert list(worker_ticks({"concurrency-schedule": "const", "concurrency": 8})) == [(0, 8)]


def test_worker_ticker_step_overshoots_end_like_ghz():
    ticks = list(worker_ticks(step_cfg()))
    counts = [sum(d for _, d in ticks[: i + 1]) for i in range(len(ticks))]
    assert counts == [5, 15, 25, 35, 45, 55]
    assert [t for t, _ in ticks] == [i * S for i in range(6)]


def test_worker_ticker_max_duration_jumps_to_end():
    assert list(worker_ticks(step_cfg(**{"concurrency-max-duration": 3 * S}))) == [
        (0, 5), (S, 10), (2 * S, 10), (3 * S, 25)]


def test_worker_ticker_step_down_and_line():
    down = step_cfg(**{"concurrency-start": 20, "concurrency-step": -5, "concurrency-end": 5})
    assert list(worker_ticks(down)) == [(0, 20), (S, -5), (2 * S, -5), (3 * S, -5)]
    line = step_cfg(**{"concurrency-schedule": "line", "concurrency-start": 0,
                       "concurrency-step": 1, "concurrency-end": 3})
    assert list(worker_ticks(line)) == [(0, 0), (S, 1), (2 * S, 1), (3 * S, 1)]


@given(st.integers(0, 1000), st.integers(1, 16))
def test_share_splits_exactly(count, nprocs):
    parts = [share(count, p, nprocs) for p in range(nprocs)]
    assert sum(parts) == count and max(parts) - min(parts) <= 1


@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_ticks_split_one_schedule_over_processes(nprocs):
    """Each process takes r = proc (mod n) at the global pacer's due times."""
    issued = []
    for proc in range(nprocs):
        ticks = Ticks(ConstantPacer(100, max_total=50), proc, nprocs)
        t = 0
        while (nxt := ticks.next(t)) is not None:
            r, wait = nxt
            t += wait
            issued.append((r, t))
    assert sorted(r for r, _ in issued) == list(range(50))
    assert all(t == (r + 1) * 10_000_000 for r, t in issued)
