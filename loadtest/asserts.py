"""``--assert`` checks on a report, for CI (not a ghz feature).

    failures = check(report, ["p99<15ms", "error_rate<0.01", "rps>500"])

Metrics: p10 p25 p50 p75 p90 p95 p99, average (avg), fastest (min), slowest (max), total
(durations: need a unit, ns/us/ms/s/m/h); rps, count, errors, error_rate (0.01 or 1%).
Operators: < <= > >= == !=.
"""

from __future__ import annotations

import operator
import re

from clawmesh.loadtest.config import ConfigError, parse_duration

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
        "<": operator.lt, ">": operator.gt}
_RE = re.compile(r"\s*([a-z_0-9]+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_DURATIONS = {"average": "average", "avg": "average", "fastest": "fastest", "min": "fastest",
              "slowest": "slowest", "max": "slowest", "total": "total"}


def parse(expr: str) -> tuple[str, str, float]:
    """``p99<15ms`` -> ("p99", "<", 15000000.0); durations in ns."""
    m = _RE.match(expr.lower())
    if not m:
        raise ConfigError(f"--assert {expr!r}: expected METRIC OP VALUE, e.g. p99<15ms")
    metric, op, raw = m.groups()
    if re.fullmatch(r"p\d+", metric) or metric in _DURATIONS:
        return metric, op, float(parse_duration(raw, f"--assert {expr}"))
    if metric not in ("rps", "count", "errors", "error_rate"):
        raise ConfigError(f"--assert {expr!r}: unknown metric {metric!r}")
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"--assert {expr!r}: bad number {raw!r}") from None
    return metric, op, value


def measure(report: dict, metric: str) -> float:
    count = report["count"]
    errors = sum(report["errorDistribution"].values())
    if metric.startswith("p") and metric[1:].isdigit():
        for entry in report["latencyDistribution"] or []:
            if entry["percentage"] == int(metric[1:]):
                return float(entry["latency"])
        if int(metric[1:]) not in (10, 25, 50, 75, 90, 95, 99):
            raise ConfigError(f"--assert: {metric} is not reported (ghz reports p10 p25 p50 "
                              "p75 p90 p95 p99)")
        return float("inf")  # no successful call: any latency bound fails
    if metric in _DURATIONS:
        return float(report[_DURATIONS[metric]])
    return {"rps": report["rps"], "count": count, "errors": errors,
            "error_rate": errors / count if count else 1.0}[metric]


def check(report: dict, exprs: list[str]) -> list[str]:
    """Failed assertions, each as ``expr (actual ...)``; empty when all pass."""
    failures = []
    for expr in exprs:
        metric, op, want = parse(expr)
        got = measure(report, metric)
        if not _OPS[op](got, want):
            shown = f"{got / 1e6:.3f}ms" if metric.startswith("p") or metric in _DURATIONS \
                else f"{got:.4g}"
            failures.append(f"{expr.strip()} (actual {metric}={shown})")
    return failures
