"""OpenTelemetry metrics, pushed over OTLP/gRPC to the metrics service.

Any OTLP receiver works as the endpoint (the metrics service or a real
OpenTelemetry Collector). Exporting runs on the SDK's background thread and is
on no request's path: if the receiver is down, messages still flow.
"""

from __future__ import annotations

import uuid

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

# Latency buckets in ms: fine below 50 ms where the mesh should live.
LATENCY_BUCKETS_MS = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200,
    300, 500, 750, 1000, 2000, 5000, 10000, 30000,
)


def meter_provider(service: str, readers: list[MetricReader]) -> MeterProvider:
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "clawmesh",
            "service.instance.id": uuid.uuid4().hex,
        }
    )
    views = [
        View(
            instrument_name="rpc.server.duration",
            aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS),
        )
    ]
    return MeterProvider(resource=resource, metric_readers=readers, views=views)


def otlp_meter_provider(service: str, endpoint: str, interval_s: float, timeout_s: float):
    """A MeterProvider exporting to ``endpoint`` (host:port, plaintext) every ``interval_s``."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=timeout_s)
    reader = PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=interval_s * 1000,
        export_timeout_millis=timeout_s * 1000,
    )
    return meter_provider(service, [reader])
