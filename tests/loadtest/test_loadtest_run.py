"""Real runs against the in-process echo server (grpc.aio, port 0)."""

from __future__ import annotations

import pytest

from clawmesh.loadtest.config import ConfigError
from clawmesh.loadtest.parallel import execute

INVALID = "rpc error: code = InvalidArgument desc = requested INVALID_ARGUMENT"
MS = 1_000_000


async def test_unary_counts_statuses_and_percentiles(echo_cfg):
    cfg = echo_cfg("Echo", total=200, concurrency=4, connections=2,
                   data=[{"message": "ok {{.RequestNumber}}"}, {"message": "error:INVALID_ARGUMENT"}],
                   metadata={"x-clawmesh-synthetic": "true", "x-id": "{{.UUID}}"})
    rep = await execute(cfg)
    assert rep["count"] == 200 and rep["endReason"] == "normal"
    # round-robin data: every odd request number hits the failing element
    assert rep["statusCodeDistribution"] == {"OK": 100, "InvalidArgument": 100}
    assert rep["errorDistribution"] == {INVALID: 100}
    lats = [p["latency"] for p in rep["latencyDistribution"]]
    assert lats == sorted(lats) and 0 < lats[0] <= rep["slowest"]
    assert len(rep["details"]) == 200
    assert rep["options"]["connections"] == 2 and rep["options"]["CPUs"] == 1


async def test_server_side_delay_shows_in_percentiles_and_skip_first(echo_cfg):
    cfg = echo_cfg("Echo", total=12, concurrency=4, skipFirst=4,
                   data={"message": "slow", "delay_ms": 20})
    rep = await execute(cfg)
    assert rep["count"] == 8
    assert rep["fastest"] >= 20 * MS
    assert all(p["latency"] >= 20 * MS for p in rep["latencyDistribution"])


async def test_multi_process_run(echo_cfg):
    cfg = echo_cfg("Echo", total=300, concurrency=4, cpus=2,
                   data=[{"message": "a"}, {"message": "b"}, {"message": "error:NOT_FOUND"}])
    rep = await execute(cfg)
    assert rep["count"] == 300 and rep["options"]["CPUs"] == 2
    assert rep["statusCodeDistribution"] == {"OK": 200, "NotFound": 100}
    ends = [d["timestamp"] for d in rep["details"]]
    assert ends == sorted(ends)  # merged in completion order


async def test_server_streaming(echo_cfg):
    rep = await execute(echo_cfg("ServerStream", total=20, concurrency=2,
                                 data={"message": "s", "count": 5}))
    assert rep["statusCodeDistribution"] == {"OK": 20}
    cut = await execute(echo_cfg("ServerStream", total=10, concurrency=2,
                                 data={"message": "s", "count": 50},
                                 **{"stream-call-count": 2}))
    assert cut["statusCodeDistribution"] == {"Canceled": 10}  # as ghz reports it


async def test_bidi_and_client_streaming(echo_cfg):
    rep = await execute(echo_cfg("Chat", total=20, concurrency=4,
                                 data=[{"message": "a"}, {"message": "b"}, {"message": "c"}],
                                 **{"stream-call-count": 5}))
    assert rep["count"] == 20 and rep["statusCodeDistribution"] == {"OK": 20}
    dyn = await execute(echo_cfg("Chat", total=10, concurrency=2,
                                 data={"message": "{{newUUID}}"},
                                 **{"stream-call-count": 3, "stream-dynamic-messages": True}))
    assert dyn["statusCodeDistribution"] == {"OK": 10}
    bad = await execute(echo_cfg("Chat", total=6, concurrency=2,
                                 data=[{"message": "a"}, {"message": "error:ABORTED"}]))
    assert bad["statusCodeDistribution"] == {"Aborted": 6}
    client = await execute(echo_cfg("ClientStream", total=10, concurrency=2,
                                    data=[{"message": "a"}, {"message": "b"}]))
    assert client["statusCodeDistribution"] == {"OK": 10}


async def test_reflection_lookup(echo_cfg):
    rep = await execute(echo_cfg("Echo", proto=False, total=10, concurrency=2,
                                 data={"message": "r"}))
    assert rep["statusCodeDistribution"] == {"OK": 10} and "proto" not in rep["options"]
    health = echo_cfg("Echo", proto=False, total=10, concurrency=2, data={"service": ""})
    health["call"] = "grpc.health.v1.Health/Check"
    assert (await execute(health))["statusCodeDistribution"] == {"OK": 10}


async def test_unknown_method_and_bad_data_fail_before_the_run(echo_cfg):
    with pytest.raises(ConfigError, match="no known field|nope"):
        await execute(echo_cfg("Echo", total=5, concurrency=1, data={"nope": 1}))
    with pytest.raises(ConfigError, match="does not include a method"):
        await execute(echo_cfg("Missing", total=5, concurrency=1))


async def test_rate_limited_run(echo_cfg):
    rep = await execute(echo_cfg("Echo", total=20, concurrency=4, rps=200,
                                 data={"message": "p"}))
    assert rep["count"] == 20
    assert rep["total"] >= 95 * MS  # the 20th tick is due at 100 ms


async def test_duration_stop_wait_and_close(echo_cfg):
    wait = await execute(echo_cfg("Echo", duration="300ms", concurrency=2,
                                  data={"message": "d", "delay_ms": 40},
                                  **{"duration-stop": "wait"}))
    assert wait["endReason"] == "timeout" and wait["options"]["total"] == 2147483647
    assert set(wait["statusCodeDistribution"]) == {"OK"}
    close = await execute(echo_cfg("Echo", duration="300ms", concurrency=2,
                                   data={"message": "d", "delay_ms": 1000}))
    # every call is still in flight when the duration ends: closed like ghz does
    assert close["statusCodeDistribution"] == {"Unavailable": 2}
    assert list(close["errorDistribution"]) == [
        "rpc error: code = Unavailable desc = transport is closing"]
    ignore = await execute(echo_cfg("Echo", duration="300ms", concurrency=2,
                                    data={"message": "d", "delay_ms": 1000},
                                    **{"duration-stop": "ignore"}))
    assert ignore["count"] == 0


async def test_concurrency_step_schedule(echo_cfg):
    cfg = echo_cfg("Echo", total=40, concurrency=4, data={"message": "s"},
                   **{"concurrency-schedule": "step", "concurrency-start": 1,
                      "concurrency-step": 1, "concurrency-end": 4,
                      "concurrency-step-duration": "10ms"})
    rep = await execute(cfg)
    assert rep["count"] == 40 and rep["statusCodeDistribution"] == {"OK": 40}
