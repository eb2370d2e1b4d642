"""One trace per message across the mesh's processes, exported over OTLP/gRPC.

The services' exporters point at a TraceService receiver the test runs
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, as they would at a Collector); every trace is
sampled (``telemetry.trace_sample_ratio: 1``).
"""

from __future__ import annotations

import grpc
import pytest

from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.launcher.mesh import MeshProcesses
from tests.otlp_receiver import OtlpReceiver
from tests.system.test_mesh_processes import mesh_env, message

pytestmark = pytest.mark.system

SERVICES = {"ingest", "routing", "memory", "provider"}
SERVER = 2  # OTLP Span.SpanKind.SPAN_KIND_SERVER


@pytest.fixture
async def traced_mesh(tmp_path):
    async with OtlpReceiver() as receiver:
        mesh = MeshProcesses(mesh_env(tmp_path, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint,
                                      CLAWMESH_TELEMETRY__TRACE_SAMPLE_RATIO="1"))
        await mesh.start()
        try:
            async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel:
                yield ingest_pb2_grpc.IngestServiceStub(channel), receiver
        finally:
            codes = await mesh.stop()
        assert all(code == 0 for code in codes.values()), codes


def assert_one_message(spans: list[dict], request_id: str) -> None:
    """Spans from every service on the path, each service's server spans carrying the request id."""
    assert {s["service"] for s in spans} >= SERVICES, {s["service"] for s in spans}
    servers = [s for s in spans if s["kind"] == SERVER]
    assert {s["service"] for s in servers} == SERVICES
    assert all(s["attributes"]["clawmesh.request_id"] == request_id for s in servers)
    ids = {s["span_id"] for s in spans}
    roots = [s for s in spans if s["parent_span_id"] not in ids]
    assert len(roots) == 1 and roots[0]["service"] == "ingest", roots  # one tree, rooted at ingest


async def test_submit_submit_stream_and_a_converse_message_are_each_one_trace(traced_mesh):
    ingest, receiver = traced_mesh
    call = ingest.Submit(ingest_pb2.SubmitRequest(message=message("hello", "trace-1")), timeout=10)
    reply = (await call).reply
    trace_id = dict(await call.trailing_metadata())["x-clawmesh-trace-id"]
    spans = await receiver.wait_for_services(trace_id, SERVICES, SERVER)
    assert_one_message(spans, reply.request_id)
    edge = next(s for s in spans if s["name"] == "clawmesh.ingest.v1.IngestService/Submit")
    assert edge["attributes"]["clawmesh.dedup"] == "new"
    assert edge["attributes"]["clawmesh.admission"] == "admitted"

    call = ingest.SubmitStream(ingest_pb2.SubmitStreamRequest(message=message("streamed", "trace-1")),
                               timeout=10)
    chunks = [r.chunk async for r in call]
    trace_id = dict(await call.trailing_metadata())["x-clawmesh-trace-id"]
    spans = await receiver.wait_for_services(trace_id, SERVICES, SERVER)
    assert_one_message(spans, chunks[-1].reply.request_id)

    conversed = ingest_pb2.ConverseRequest(correlation_id="c1", message=message("conversed", "trace-1"))
    [answer] = [r async for r in ingest.Converse(iter([conversed]), timeout=10)]
    request_id = answer.reply.request_id
    first = await receiver.wait_for(
        lambda s: s["service"] == "ingest" and s["attributes"].get("clawmesh.request_id") == request_id)
    spans = await receiver.wait_for_services(first["trace_id"], SERVICES, SERVER)
    assert_one_message(spans, request_id)
    assert first["links"]  # to the Converse stream's own span
    assert all(s["trace_id"] != trace_id for s in spans)


async def get_trace(metrics, wanted: set[str], **lookup) -> list:
    """GetTrace from the metrics service until server spans of every ``wanted`` service are in."""
    import asyncio
    import time

    from clawmesh.metrics.v1 import metrics_pb2

    deadline = time.monotonic() + 10
    while True:
        try:
            response = await metrics.GetTrace(metrics_pb2.GetTraceRequest(**lookup), timeout=2)
            servers = {s.service for s in response.spans if s.kind == metrics_pb2.SPAN_KIND_SERVER}
            if servers >= wanted:
                return list(response.spans)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        assert time.monotonic() < deadline, f"no complete trace for {lookup}"
        await asyncio.sleep(0.1)  # the exporters batch spans off the request path


async def test_the_metrics_service_holds_each_trace_and_clawmesh_trace_prints_it(tmp_path):
    import asyncio
    import sys

    from clawmesh.metrics.v1 import metrics_pb2_grpc

    # No OTEL_* variables: every service exports to the mesh's own metrics service.
    env = mesh_env(tmp_path, CLAWMESH_TELEMETRY__TRACE_SAMPLE_RATIO="1")
    mesh = MeshProcesses(env)
    await mesh.start()
    try:
        async with grpc.aio.insecure_channel(mesh.target("ingest")) as channel, \
                grpc.aio.insecure_channel(mesh.target("metrics")) as mchannel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            metrics = metrics_pb2_grpc.MetricsServiceStub(mchannel)
            call = ingest.Submit(ingest_pb2.SubmitRequest(message=message("hello", "mt-1")), timeout=10)
            reply = (await call).reply
            trace_id = dict(await call.trailing_metadata())["x-clawmesh-trace-id"]
            spans = await get_trace(metrics, SERVICES, trace_id=trace_id)
            assert {s.trace_id for s in spans} == {trace_id}
            assert [s.depth for s in spans][0] == 0 and spans[0].service == "ingest"
            assert all(s.attributes["clawmesh.request_id"] == reply.request_id
                       for s in spans if s.kind == 2)
            # The same trace found by the request id the reply carries.
            assert {s.span_id for s in await get_trace(metrics, SERVICES, request_id=reply.request_id)} \
                == {s.span_id for s in spans}

            stream = ingest.SubmitStream(ingest_pb2.SubmitStreamRequest(message=message("streamed", "mt-1")),
                                         timeout=10)
            chunks = [r.chunk async for r in stream]
            await get_trace(metrics, SERVICES, request_id=chunks[-1].reply.request_id)
            conversed = ingest_pb2.ConverseRequest(correlation_id="c1", message=message("conversed", "mt-1"))
            [answer] = [r async for r in ingest.Converse(iter([conversed]), timeout=10)]
            await get_trace(metrics, SERVICES, request_id=answer.reply.request_id)

        # `clawmesh trace` prints the waterfall of the first message from the shell.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clawmesh.launcher.cli", "trace", trace_id, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        printed = out.decode()
        assert proc.returncode == 0, err.decode()
        assert trace_id in printed
        for service in SERVICES:
            assert service in printed
        assert "IngestService/Submit" in printed
    finally:
        codes = await mesh.stop()
    assert all(code == 0 for code in codes.values()), codes
