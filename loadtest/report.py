"""ghz's report: statistics (runner/reporter.go) and the JSON / summary / CSV formats.

    report = build_report(results, total_ns=..., end_reason="normal", options=...)
    text = render(report, "summary")     # or "json", "pretty", "csv", "html"

``results`` are ``Result`` tuples in completion order. Field names, units (integer
nanoseconds) and formulas follow ghz.md section 4 and 5 exactly.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, NamedTuple

NANO = 10**9
PERCENTILES = (10, 25, 50, 75, 90, 95, 99)
MAX_DETAILS = 1_000_000


class Result(NamedTuple):
    """One finished call (a whole stream counts as one)."""

    end_ns: int  # wall clock (time.time_ns) when the RPC ended
    latency_ns: int
    status: str  # Go code name: OK, InvalidArgument, Canceled, ...
    error: str  # "" if OK, else "rpc error: code = X desc = ..."


class Struct(dict):
    """A Go struct: keys keep their order in JSON (plain dicts are Go maps: sorted)."""


def seconds(ns: int) -> float:
    """Go ``Duration.Seconds()``."""
    return ns // NANO + (ns % NANO) / 1e9


def from_seconds(s: float) -> int:
    """Go ``time.Duration(s * float64(time.Second))`` (truncates)."""
    return int(s * 1e9)


def percentiles(lats: list[float]) -> list[Struct]:
    """ghz's nearest-rank percentiles over sorted float seconds; 0 -> {0, 0}."""
    out = []
    n = float(len(lats))
    for p in PERCENTILES:
        ip = (p / 100.0) * n
        di = int(ip)
        if ip == float(di):
            di -= 1
        value = lats[max(di, 0)]
        out.append(Struct(percentage=p, latency=from_seconds(value)) if value > 0
                   else Struct(percentage=0, latency=0))
    return out


def histogram(lats: list[float], slowest: float, fastest: float) -> list[Struct]:
    """11 buckets; a latency goes to the first bucket whose mark is >= it."""
    bc = 10
    bs = (slowest - fastest) / bc
    marks = [fastest + bs * i for i in range(bc)] + [slowest]
    counts = [0] * (bc + 1)
    bi = 0
    for lat in lats:
        while lat > marks[bi] and bi < bc:
            bi += 1
        counts[bi] += 1
    n = len(lats)
    return [Struct(mark=m, count=c, frequency=c / n) for m, c in zip(marks, counts, strict=True)]


def rfc3339(ns: int, nano: bool = False) -> str:
    """Go RFC 3339 (``nano``: RFC3339Nano, trailing zeros trimmed) in the local zone."""
    secs, frac = divmod(ns, NANO)
    t = dt.datetime.fromtimestamp(secs).astimezone()
    z = t.strftime("%z")
    zone = "Z" if z == "+0000" else f"{z[:3]}:{z[3:]}"
    digits = f".{frac:09d}".rstrip("0") if nano and frac else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (digits if len(digits) > 1 else "") + zone


def build_report(results: list[Result], *, total_ns: int, end_reason: str, options: dict,
                 name: str = "", tags: dict | None = None, skip_first: int = 0,
                 count_errors: bool = False, date_ns: int | None = None) -> Struct:
    """The report ghz's Finalize produces (``skip_first`` drops completion-order heads)."""
    results = results[skip_first:]
    count = len(results)
    rep = Struct(date=rfc3339(time.time_ns() if date_ns is None else date_ns))
    if name:
        rep["name"] = name
    rep.update(endReason=end_reason, options=options, count=count, total=total_ns,
               average=0, fastest=0, slowest=0, rps=0.0)
    errors: dict[str, int] = {}
    codes: dict[str, int] = {}
    sum_s = 0.0
    eligible = []
    for r in results:
        s = seconds(r.latency_ns)
        sum_s += s
        codes[r.status] = codes.get(r.status, 0) + 1
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
        if not r.error or count_errors:
            eligible.append(s)
    lat_dist = hist = None
    if count:
        rep["average"] = from_seconds(sum_s / count)
        rep["rps"] = count / seconds(total_ns) if total_ns > 0 else 0.0
        eligible.sort()
        if eligible:
            rep["fastest"] = from_seconds(eligible[0])
            rep["slowest"] = from_seconds(eligible[-1])
            hist = histogram(eligible, eligible[-1], eligible[0])
            lat_dist = percentiles(eligible)
    details = [Struct(timestamp=rfc3339(r.end_ns, nano=True), latency=r.latency_ns,
                      error=r.error, status=r.status) for r in results[:MAX_DETAILS]]
    rep.update(errorDistribution=errors, statusCodeDistribution=codes,
               latencyDistribution=lat_dist, histogram=hist, details=details or None)
    if tags:
        rep["tags"] = dict(tags)
    return rep


_OPTIONAL = {"call", "host", "proto", "protoset", "import-paths", "enable-compression", "cacert",
             "cert", "key", "cname", "skipTLS", "authority", "rps", "concurrency", "total",
             "async", "connections", "duration", "timeout", "dial-timeout", "keepalive", "data",
             "metadata", "name", "skipFirst", "count-errors"}
_ORDER = ["call", "host", "proto", "protoset", "import-paths", "enable-compression", "cacert",
          "cert", "key", "cname", "skipTLS", "insecure", "authority", "rps", "load-schedule",
          "load-start", "load-end", "load-step", "load-step-duration", "load-max-duration",
          "concurrency", "concurrency-schedule", "concurrency-start", "concurrency-end",
          "concurrency-step", "concurrency-step-duration", "concurrency-max-duration", "total",
          "async", "connections", "duration", "timeout", "dial-timeout", "keepalive", "data",
          "binary", "metadata", "CPUs", "name", "skipFirst", "count-errors"]


def report_options(cfg: dict, import_paths: list[str] | None = None) -> Struct:
    """The report's ``options`` object (durations in ns; ``dial-timeout``, ``CPUs``)."""
    src = dict(cfg, **{"dial-timeout": cfg["connect-timeout"], "CPUs": cfg["cpus"],
                       "import-paths": import_paths if cfg["proto"] else cfg["import-paths"],
                       "binary": bool(cfg.get("binary-file"))})
    if src["binary"]:
        src["data"] = None
    out = Struct()
    for key in _ORDER:
        value = src.get(key)
        if key in _OPTIONAL and value in (None, "", 0, False, [], {}):
            continue
        out[key] = value
    return out


def go_json(value: Any, indent: str | None = None, _level: int = 0) -> str:
    """Go ``json.Marshal`` / ``MarshalIndent(v, "", indent)``: HTML-safe escapes, Go floats,
    sorted map keys (``Struct`` keys keep their order)."""
    from clawmesh.loadtest.tfuncs import go_float

    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value, json=True)
    if isinstance(value, str):
        return _go_str(value)
    if isinstance(value, dict):
        items = list(value.items()) if isinstance(value, Struct) else sorted(value.items())
        parts = [f"{_go_str(str(k))}:{' ' if indent else ''}{go_json(v, indent, _level + 1)}"
                 for k, v in items]
        return _join(parts, "{", "}", indent, _level)
    if isinstance(value, list | tuple):
        return _join([go_json(v, indent, _level + 1) for v in value], "[", "]", indent, _level)
    return _go_str(str(value))


def _join(parts: list[str], open_: str, close: str, indent: str | None, level: int) -> str:
    if not parts:
        return open_ + close
    if not indent:
        return open_ + ",".join(parts) + close
    pad = "\n" + indent * (level + 1)
    return open_ + pad + ("," + pad).join(parts) + "\n" + indent * level + close


_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "<": "\\u003c",
        ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_str(s: str) -> str:
    out = []
    for ch in s:
        esc = _ESC.get(ch)
        out.append(esc if esc else f"\\u{ord(ch):04x}" if ord(ch) < 0x20 else ch)
    return '"' + "".join(out) + '"'
