"""The five services of the mesh, in one place: name, gRPC services, builder, order.

    for spec in REGISTRY:                      # start order: leaves first
        server = await spec.build(settings, stats)
    spec = by_name("memory"); spec.grpc_name   # "clawmesh.memory.v1.MemoryService"

Stop order is the reverse (edge first, so nothing is accepted that a stopped
dependency could not finish). The gRPC names come from the contracts'
descriptors; builders are imported only when a service is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_metrics_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace_pb2

from clawmesh.ingest.v1 import ingest_pb2
from clawmesh.memory.v1 import memory_pb2
from clawmesh.metrics.v1 import metrics_pb2
from clawmesh.provider.v1 import provider_pb2
from clawmesh.routing.v1 import routing_pb2


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the mesh."""

    name: str
    grpc_services: tuple[str, ...]  # the first is the service's own API
    builder: str  # "module:function", called as ``await fn(settings, stats)``

    @property
    def grpc_name(self) -> str:
        return self.grpc_services[0]

    async def build(self, settings, stats=None):
        """Build (not start) this service's MeshServer."""
        module, function = self.builder.split(":")
        return await getattr(importlib.import_module(module), function)(settings, stats)


def _full(module, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name


# Start order: leaves first, so the first requests find their dependencies up.
REGISTRY: tuple[ServiceSpec, ...] = (
    ServiceSpec("metrics", (
        _full(metrics_pb2, "MetricsService"),
        _full(otlp_metrics_pb2, "MetricsService"),  # OTLP receivers: a Collector's API
        _full(otlp_trace_pb2, "TraceService"),
    ), "clawmesh.services.metrics.main:build"),
    ServiceSpec("memory", (_full(memory_pb2, "MemoryService"),), "clawmesh.services.memory.main:build"),
    ServiceSpec("provider", (_full(provider_pb2, "ProviderService"),),
                "clawmesh.services.provider.main:build"),
    ServiceSpec("routing", (_full(routing_pb2, "RoutingService"),), "clawmesh.services.routing.main:build"),
    ServiceSpec("ingest", (_full(ingest_pb2, "IngestService"),), "clawmesh.services.ingest.main:build"),
)

NAMES: tuple[str, ...] = tuple(spec.name for spec in REGISTRY)
START_ORDER = NAMES
STOP_ORDER: tuple[str, ...] = tuple(reversed(NAMES))


def by_name(name: str) -> ServiceSpec:
    for spec in REGISTRY:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown service {name!r}; expected one of {', '.join(NAMES)}")
