"""A small OTLP/gRPC TraceService receiver for tests: it keeps every span it is sent.

    async with OtlpReceiver() as receiver:       # listening on 127.0.0.1:<receiver.port>
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.endpoint
        ...
        span = await receiver.wait_for(lambda s: s["name"] == "work")
        receiver.trace(span["trace_id"])         # every span of that trace so far

Spans are plain dicts: trace_id / span_id / parent_span_id (hex), name, kind (the OTLP
number), service (the resource's service.name), attributes, status_code, links.
"""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(any_value):
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: list[dict]) -> None:
        self.spans = spans

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(), "name": span.name,
                        "kind": span.kind, "service": resource.get("service.name"),
                        "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                        "status_code": span.status.code,
                        "links": [link.trace_id.hex() for link in span.links],
                    })
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self.spans), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> OtlpReceiver:
        await self.server.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.stop(0)

    def trace(self, trace_id: str) -> list[dict]:
        return [s for s in self.spans if s["trace_id"] == trace_id]

    async def wait_for(self, predicate, timeout_s: float = 10.0) -> dict:
        """The first span received that ``predicate`` accepts, waiting up to ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            found = next((s for s in self.spans if predicate(s)), None)
            if found is not None:
                return found
            if loop.time() > deadline:
                raise AssertionError(f"no such span after {timeout_s:g}s; got {len(self.spans)} spans")
            await asyncio.sleep(0.02)  # exports arrive from other processes' batch processors

    async def wait_for_services(self, trace_id: str, services: set[str], kind: int | None = None,
                                timeout_s: float = 10.0) -> list[dict]:
        """The trace's spans once each of ``services`` has sent one (of ``kind``, if given),
        or what came within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            spans = self.trace(trace_id)
            senders = {s["service"] for s in spans if kind is None or s["kind"] == kind}
            if services <= senders or loop.time() > deadline:
                return spans
            await asyncio.sleep(0.02)  # exports arrive from other processes' batch processors
