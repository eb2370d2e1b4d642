"""What every RPC-metrics exporter agrees on: the latency bucket bounds (ms).

RPC metrics are aggregated in process by ``clawmesh.shared.rpcstats.RpcStats``
(~1 µs per call, no telemetry SDK on a request's path) and pushed over OTLP/gRPC
by ``clawmesh.shared.rpcstats.OtlpStatsExporter`` to the metrics service (or
any OpenTelemetry Collector).
"""

from __future__ import annotations

# Latency buckets in ms: fine below 50 ms where the mesh should live.
LATENCY_BUCKETS_MS = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200,
    300, 500, 750, 1000, 2000, 5000, 10000, 30000,
)
