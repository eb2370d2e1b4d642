"""/metrics in Prometheus format from an RpcStats: names, labels, buckets, gauges, HTTP."""

from __future__ import annotations

import asyncio
import math
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from clawmesh.shared.prometheus import split_gauge_key, start_endpoint
from clawmesh.shared.rpcstats import RpcStats
from clawmesh.shared.settings import MeshSettings, SettingsError, load_settings

SUBMIT = "/clawmesh.ingest.v1.IngestService/Submit"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kv) -> frozenset:
    return frozenset({"component": "ingest", **kv}.items())


async def scrape(stats: RpcStats, path: str = "/metrics", **headers) -> tuple[int, dict, str]:
    endpoint = await start_endpoint(stats, "ingest", "127.0.0.1", 0)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{endpoint.port}{path}", headers=headers)

        def get():
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, dict(response.headers), response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers), exc.read().decode()

        return await asyncio.to_thread(get)
    finally:
        await endpoint.close()


async def test_calls_per_method_and_code_and_their_latency_histogram():
    stats = RpcStats()
    for ms in (0.2, 3.0, 3.0, 40.0):
        stats.record(SUBMIT, 0, ms)
    stats.record(SUBMIT, 8, 1.0)  # RESOURCE_EXHAUSTED
    status, headers, text = await scrape(stats)
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), headers
    got = samples(text)
    ok = {"grpc_service": "clawmesh.ingest.v1.IngestService", "grpc_method": "Submit", "grpc_code": "OK"}
    assert got[("grpc_server_handled_total", labels(**ok))] == 4
    exhausted = {**ok, "grpc_code": "RESOURCE_EXHAUSTED"}
    assert got[("grpc_server_handled_total", labels(**exhausted))] == 1
    # Cumulative buckets in seconds, as Prometheus histograms are.
    assert got[("grpc_server_handling_seconds_bucket", labels(**ok, le="0.00025"))] == 1
    assert got[("grpc_server_handling_seconds_bucket", labels(**ok, le="0.003"))] == 3
    assert got[("grpc_server_handling_seconds_bucket", labels(**ok, le="0.03"))] == 3
    assert got[("grpc_server_handling_seconds_bucket", labels(**ok, le="0.05"))] == 4
    assert got[("grpc_server_handling_seconds_bucket", labels(**ok, le="+Inf"))] == 4
    assert got[("grpc_server_handling_seconds_count", labels(**ok))] == 4
    assert math.isclose(got[("grpc_server_handling_seconds_sum", labels(**ok))], 0.0462)
    # The process's own figures come along, with the component label too.
    assert got[("process_resident_memory_bytes", labels())] > 10 * 2**20


async def test_gauges_keep_their_names_and_embedded_labels():
    stats = RpcStats()
    stats.add_gauges("edge", lambda: {"admission.load_percentage": 12.5, "admission.waiting_count": 3,
                                      "nothing": None, "infinite": math.inf})

    async def dedup():
        return {"current_entries": 7}

    stats.add_gauges("edge.dedup", dedup)
    peer = "ipv4:127.0.0.1:5001,127.0.0.1:5002"  # a comma inside a label value
    stats.add_gauges("breaker", lambda: {
        f"state{{peer={peer},method=/clawmesh.routing.v1.RoutingService/Route}}": 2.0,
        "state{peer=memory:50054,method=/clawmesh.memory.v1.MemoryService/Append}": 1.0,
    })
    stats.add_gauges("broken", lambda: 1 / 0)
    _, _, text = await scrape(stats)
    got = samples(text)
    assert got[("clawmesh_edge_admission_load_percentage", labels())] == 12.5
    assert got[("clawmesh_edge_admission_waiting_count", labels())] == 3
    assert got[("clawmesh_edge_dedup_current_entries", labels())] == 7
    route = "/clawmesh.routing.v1.RoutingService/Route"
    assert got[("clawmesh_breaker_state", labels(peer=peer, method=route))] == 2
    assert got[("clawmesh_breaker_state", labels(
        peer="memory:50054", method="/clawmesh.memory.v1.MemoryService/Append"))] == 1
    assert not [key for key in got if "nothing" in key[0] or "infinite" in key[0]]
    assert got[("clawmesh_gauge_source_errors_total", labels())] == 1  # the broken source


def test_gauge_keys_split_into_a_name_and_labels():
    assert split_gauge_key("clawmesh.edge.shadow.ratelimit-would-refuse") == (
        "clawmesh_edge_shadow_ratelimit_would_refuse", {})
    assert split_gauge_key("clawmesh.breaker.state{peer=a:1,b:2,method=/p.S/M}") == (
        "clawmesh_breaker_state", {"peer": "a:1,b:2", "method": "/p.S/M"})


async def test_openmetrics_when_the_scraper_asks_for_it():
    stats = RpcStats()
    stats.record(SUBMIT, 0, 1.0)
    status, headers, text = await scrape(stats, Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    names = {f.name for f in parse_openmetrics(text)}
    assert {"grpc_server_handled", "grpc_server_handling_seconds"} <= names, names


async def test_other_paths_and_methods_are_refused_and_the_endpoint_goes_on():
    stats = RpcStats()
    endpoint = await start_endpoint(stats, "ingest", "127.0.0.1", 0)
    try:
        async def raw(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            writer.write(request)
            writer.write_eof()  # a request cut short is dropped at once, not after the timeout
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer

        assert (await raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await raw(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        head = await raw(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # no body
        assert await raw(b"\x16\x03\x01garbage") == b""  # not HTTP: closed, nothing answered
        assert (await raw(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        await endpoint.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", endpoint.port)


def test_the_setting_is_off_by_default_and_must_not_take_the_grpc_port():
    assert all(MeshSettings().server(n).prometheus_port is None
               for n in ("ingest", "routing", "provider", "memory", "metrics"))
    settings = load_settings({"CLAWMESH_ROUTING__PROMETHEUS_PORT": "9464"})
    assert settings.routing.prometheus_port == 9464
    with pytest.raises(SettingsError, match="CLAWMESH_INGEST: .*prometheus_port and port are both 50051"):
        load_settings({"CLAWMESH_INGEST__PROMETHEUS_PORT": "50051"})
