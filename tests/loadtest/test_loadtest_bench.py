"""`make bench` end to end, shortened: real echo server, real mesh, real client and h2load."""

from __future__ import annotations

import json

import pytest

from bench.run import main

pytestmark = pytest.mark.system


def test_bench_measures_every_target_and_writes_results(tmp_path):
    assert main(["--seconds", "0.5", "--concurrency", "8", "--out", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    names = [row["name"] for row in results["rows"]]
    assert names[0] == "echo (bare grpc.aio)" and len(names) == 9
    for row in results["rows"]:
        assert row["ok"] > 0 and row["errors"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert set(results["idle_rss_mb"]) == {"ingest", "routing", "provider", "memory", "metrics"}
    assert 0 < results["cold_start_s"] < 30
    assert results["h2load"]["echo"]["rps"] > 0 and results["h2load"]["submit"]["rps"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| e2e unary Submit / bare echo | ≥ 0.6 |" in text
