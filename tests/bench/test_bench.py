"""`make bench` end to end, shortened: real echo server, mesh (both transports), lean client, h2load,
overload, the edge gate on vs off, tracing off vs on.

Asserts the structure and sanity of the results, not performance.
"""

from __future__ import annotations

import json

import pytest

from bench.lean_client import latency_summary
from bench.run import MESH, TRANSPORTS, gate_ratios, main

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def test_bench_measures_every_row_and_writes_results(tmp_path):
    assert main(["--seconds", "0.5", "--concurrency", "8", "--rounds", "1", "--gate-rounds", "1",
                 "--tracing-rounds", "1", "--overload-seconds", "1", "--out", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert rows[0]["kind"] == "echo"
    for row in rows:
        assert row["ok"] > 0 and row["errors"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["msgs_per_s"] > 0, row
        assert row["server_cpu_us"] > 0, row
        assert row["cpu_busy_pct"] > 0, row
        if row["kind"] != "inprocess":
            assert row["client_cpu_us"] > 0, row

    for transport in TRANSPORTS:
        kinds = {r["kind"] for r in rows if r["transport"] == transport}
        assert kinds == {"submit", "submit_stream", "converse", "half_rate"}, (transport, kinds)
        for row in (r for r in rows if r["transport"] == transport):
            assert set(row["cpu_us"]) == set(MESH), row
        mesh = results["mesh"][transport]
        assert 0 < mesh["cold_start_s"] < 30
        assert set(mesh["idle_rss_mb"]) == set(MESH)
        assert all(v > 0 for v in mesh["idle_rss_mb"].values())
    half = [r for r in rows if r["kind"] == "half_rate"]
    assert all(r["rate_target"] > 0 for r in half)

    unit = results["bare_echo_us"]
    assert unit["server"] > 0 and unit["client"] > 0
    engine = results["load_engine"]
    assert engine["engine"]["ok"] > 0 and engine["engine"]["client_cpu_us"] > 0
    assert engine["lean"]["client_cpu_us"] > 0
    # The in-process bound is a row, or its absence is reported.
    assert any(r["kind"] == "inprocess" for r in rows) or results.get("inprocess_missing")

    [ab] = results["ab"]  # one A/B round: both transports measured back to back
    for transport in TRANSPORTS:
        assert ab[transport]["msgs_per_s"] > 0 and ab[transport]["server_cpu_us"] > 0
    # Overload: 3x the max Submit rate (stream hops), open loop, a deadline on every call.
    over = results["overload"]
    [submit] = [r for r in rows if r["kind"] == "submit" and r["transport"] == over["transport"]]
    assert over["capacity_per_s"] == submit["msgs_per_s"]
    assert over["rate_target"] == max(1.0, round(3 * submit["msgs_per_s"]))
    assert over["timeout_s"] == 2.0 and over["seconds"] == 1.0
    assert over["open_loop"]["scheduled"] == int(over["rate_target"] * over["seconds"])
    assert over["ok"] > 0 and over["goodput_per_s"] > 0 and over["goodput_ratio"] > 0
    assert over["codes"]["OK"] == over["ok"]
    assert sum(over["codes"].values()) == over["ok"] + over["failures"] == over["open_loop"]["scheduled"]
    for code, lat in over["error_latency"].items():  # every failure has a latency, by code
        assert lat["count"] == over["codes"][code] and 0 <= lat["within"]["100"] <= lat["count"], code
        assert 0 <= lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"] < 10_000, code
    assert sum(x["count"] for x in over["error_latency"].values()) == over["failures"]
    for key in ("refused_share", "refused_fast_share", "refused_fast_share_of_failures"):
        assert over[key] is None or 0 <= over[key] <= 1, key
    assert 0 < over["admitted"]["p50_ms"] <= over["admitted"]["p99_ms"] < 10_000
    assert over["unloaded"]["p99_ms"] > 0 and over["unloaded"]["rate"] > 0

    # The edge gate on vs off: one mesh, one ingest per policy, alternated.
    gate = results["gate"]
    # redis-server is installed by `make test` (system-deps): its variant is never optional.
    expected = {"on", "on_limit", "off", "off_no_ids", "on_limit_redis"}
    assert "redis_missing" not in gate
    assert set(gate["measured"]) == expected
    assert gate["policies"]["on"] is None
    assert gate["policies"]["off"] == {"dedup": {"enforce": False}, "admission": {"enforce": False}}
    [one] = gate["rounds"]
    for key in expected:
        point = one[key]
        assert point["msgs_per_s"] > 0 and point["errors"] == 0, (key, point)
        assert point["server_cpu_us"] > point["ingest_cpu_us"] > 0, (key, point)
        assert (point["redis_cpu_us"] is not None) == (key == "on_limit_redis"), key
    for key in ("on/off", "on_limit/off", "off/off_no_ids"):
        assert gate["ratios"][key]["median"] > 0, key

    # Tracing off vs on vs every trace: three meshes, alternated.
    tracing = results["tracing"]
    [one] = tracing["rounds"]
    assert set(one) == {"off", "on", "all"} and tracing["default_ratio"] > 0
    for key, point in one.items():
        assert point["msgs_per_s"] > 0 and point["errors"] == 0, (key, point)
        assert set(point["cpu_us"]) == set(MESH), (key, point)
    assert tracing["ratios"]["on"]["median"] > 0 and tracing["ratios"]["all"]["median"] > 0

    goals = results["goals"]
    assert len(goals) == 10
    names = " ".join(g["goal"] for g in goals)
    assert "goodput" in names and "RESOURCE_EXHAUSTED" in names and "admitted p99" in names
    assert "edge gate on ÷ off" in names and "tracing on" in names
    for goal in goals:
        assert goal["met"] in (True, False, None) and goal["measured"], goal

    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## How measured", "## Throughput and latency", "## CPU per message",
                    "## Load client overhead", "## A/B: both transports back to back", "## Goals",
                    "## Overload", "## Edge gate on vs off", "## Tracing off vs on", "## Start and memory"):
        assert heading in text, heading
    assert "unary" in text and "stream" in text


def test_latency_summary_counts_within_thresholds():
    ms = 1_000_000
    out = latency_summary([5 * ms, 150 * ms, 50 * ms, 100 * ms], [100])
    assert out["count"] == 4 and out["within"] == {"100": 3}
    assert out["p50_ms"] == 100 and out["max_ms"] == 150
    assert latency_summary([], [100]) == {"count": 0, "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0,
                                          "max_ms": 0.0, "within": {"100": 0}}


def test_gate_ratios_are_medians_of_per_round_ratios():
    rounds = [{"on": {"msgs_per_s": 90}, "off": {"msgs_per_s": 100}, "off_no_ids": {"msgs_per_s": 120}},
              {"on": {"msgs_per_s": 80}, "off": {"msgs_per_s": 100}, "off_no_ids": {"msgs_per_s": 100}},
              {"on": {"msgs_per_s": 200}, "off": {"msgs_per_s": 100}, "off_no_ids": {"msgs_per_s": 100}}]
    ratios = gate_ratios(rounds)
    assert ratios["on/off"] == {"median": 0.9, "rounds": [0.9, 0.8, 2.0]}
    assert ratios["off/off_no_ids"]["median"] == 1.0
    assert "on_limit/off" not in ratios
