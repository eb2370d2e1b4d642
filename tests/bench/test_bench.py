"""`make bench` end to end, shortened: real echo server, mesh (both transports), lean client, h2load.

Asserts the structure and sanity of the results, not performance.
"""

from __future__ import annotations

import json

import pytest

from bench.run import MESH, TRANSPORTS, main

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def test_bench_measures_every_row_and_writes_results(tmp_path):
    assert main(["--seconds", "0.5", "--concurrency", "8", "--rounds", "1", "--out", str(tmp_path),
                 "--quiet"]) == 0
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
    goals = results["goals"]
    assert len(goals) == 5
    for goal in goals:
        assert goal["met"] in (True, False, None) and goal["measured"], goal

    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## How measured", "## Throughput and latency", "## CPU per message",
                    "## Load client overhead", "## A/B: both transports back to back", "## Goals",
                    "## Start and memory"):
        assert heading in text, heading
    assert "unary" in text and "stream" in text
