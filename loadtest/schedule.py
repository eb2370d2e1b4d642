"""ghz's pacers (load schedules) and worker ticker (concurrency schedules), as pure
functions of elapsed time so they can be tested with exact counts.

    pacer = make_pacer(cfg)                  # ConstantPacer or StepPacer
    wait_ns, stop = pacer.pace(elapsed_ns, hits)
    list(worker_ticks(cfg))                  # [(t_ns, delta_workers), ...]

Port of ghz ``load/pacer.go`` and ``load/worker_ticker.go`` (ghz.md section 3).
"""

from __future__ import annotations

from collections.abc import Iterator

NANO = 10**9
_MAX_INT64 = 2**63 - 1


class ConstantPacer:
    """``freq`` hits per second (0 = unlimited), stopping after ``max_total`` hits."""

    def __init__(self, freq: int, max_total: int = 0) -> None:
        self.freq, self.max_total = freq, max_total

    def pace(self, elapsed: int, hits: int) -> tuple[int, bool]:
        if self.max_total > 0 and hits >= self.max_total:
            return 0, True
        if self.freq == 0:
            return 0, False
        if hits < self.freq * (elapsed // NANO):
            return 0, False  # behind: catch up at whole-second boundaries
        interval = NANO // self.freq
        if interval and _MAX_INT64 // interval < hits:
            return 0, True
        return (hits + 1) * interval - elapsed, False

    def rate(self, elapsed: int) -> float:
        return float(self.freq)


class StepPacer:
    """Start at ``start`` hits/s and add ``step`` every ``step_duration`` ns; optional
    ``end`` rate and ``load_duration`` after which the rate is held constant."""

    def __init__(self, start: int, step: int, step_duration: int, end: int = 0,
                 load_duration: int = 0, max_total: int = 0) -> None:
        if step_duration <= 0 or step == 0 or start <= 0:
            raise ValueError("step pacer needs start > 0, step != 0 and a step duration")
        self.start, self.step, self.step_duration = start, step, step_duration
        self.end, self.load_duration, self.max_total = end, load_duration, max_total
        self.const_at = 0
        if load_duration > 0:
            self.const_at = load_duration
            if self.end == 0:
                self.end = start + step * (load_duration // step_duration)
        elif end > 0:
            t = 0
            while not (self._ramp(t) > end if step > 0 else self._ramp(t) < end):
                t += step_duration
            self.const_at = t
        self.stop = ConstantPacer(self.end)
        self.const_hits = self.hits(self.const_at) if self.const_at > 0 else 0.0

    def _ramp(self, elapsed: int) -> float:
        return max(0.0, float(self.start + self.step * (elapsed // self.step_duration)))

    def rate(self, elapsed: int) -> float:
        if self.const_at > 0 and elapsed >= self.const_at:
            return float(self.end)
        return self._ramp(elapsed)

    def hits(self, t: int) -> float:
        """Expected hits by ``t``: the integral of the step function."""
        if t < 0:
            return 0.0
        sd = self.step_duration
        steps = t // sd
        total = self.start * min(t, sd) / NANO
        for i in range(1, steps):
            total += self.rate(i * sd) * sd / NANO
        if steps > 0:
            total += (t - steps * sd) / NANO * self.rate(t)
        return total

    def pace(self, elapsed: int, hits: int) -> tuple[int, bool]:
        if self.max_total > 0 and hits >= self.max_total:
            return 0, True
        expected = self.hits(elapsed)
        if hits < int(expected):
            return 0, False
        if self.const_at > 0 and elapsed >= self.const_at:
            if self.end == 0:
                return 0, True
            return self.stop.pace(elapsed - self.const_at, hits - int(self.const_hits))
        rate = self.rate(elapsed)
        if rate <= 0:  # ramped down to zero with no end: nothing more to send
            return 0, True
        interval = round(NANO / rate)
        return int(interval * (hits + 1 - expected)), False


def make_pacer(cfg: dict) -> ConstantPacer | StepPacer:
    """The pacer for a normalized config (``max_total`` = total)."""
    total = cfg["total"]
    if cfg["load-schedule"] == "const":
        return ConstantPacer(cfg["rps"], total)
    return StepPacer(cfg["load-start"], cfg["load-step"], cfg["load-step-duration"],
                     cfg["load-end"], cfg["load-max-duration"], total)


def worker_ticks(cfg: dict) -> Iterator[tuple[int, int]]:
    """(elapsed ns, worker delta) events of the concurrency schedule; finite once the ramp
    stops adjusting (``step`` may overshoot ``end``, as in ghz)."""
    if cfg["concurrency-schedule"] == "const":
        yield 0, cfg["concurrency"]
        return
    start, step, end = cfg["concurrency-start"], cfg["concurrency-step"], cfg["concurrency-end"]
    period, max_dur = cfg["concurrency-step-duration"], cfg["concurrency-max-duration"]
    count = start
    yield 0, start
    up = step > 0
    k = 0
    while True:
        k += 1
        t = k * period
        if max_dur > 0 and t >= max_dur:
            if end > 0 and (count <= end if up else count >= end) and end != count:
                yield t, end - count
            return
        if max_dur == 0 and (up and end > 0 and count >= end or not up and count <= end):
            return
        delta = step if up or count + step >= 0 else -count
        if delta == 0:
            return
        count += delta
        yield t, delta


def share(count: int, proc: int, nprocs: int) -> int:
    """How many of global items 0..count-1 belong to process ``proc`` (item k -> k % nprocs)."""
    return 0 if count <= proc else (count - proc + nprocs - 1) // nprocs


class Ticks:
    """Issues the global request numbers r = proc, proc+nprocs, ... with the pacer's due
    times, so that N processes together follow one ghz pacer exactly."""

    def __init__(self, pacer: ConstantPacer | StepPacer, proc: int = 0, nprocs: int = 1) -> None:
        self.pacer, self.next_r, self.nprocs = pacer, proc, nprocs

    def next(self, elapsed: int) -> tuple[int, int] | None:
        """(request number, ns to wait before sending it), or None when done."""
        wait, stop = self.pacer.pace(elapsed, self.next_r)
        if stop:
            return None
        r = self.next_r
        self.next_r += self.nprocs
        return r, max(0, wait)


def expected_sent(pacer: ConstantPacer | StepPacer, until: int, limit: int = 10**7) -> int:
    """How many ticks an on-time pacer issues in [0, until] (a test and planning aid)."""
    t, h = 0, 0
    while h < limit:
        wait, stop = pacer.pace(t, h)
        if stop or t + max(0, wait) > until:
            return h
        t += max(0, wait)
        h += 1
    return h
