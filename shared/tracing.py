"""Tracing: the process's OpenTelemetry tracer provider, and the span attributes the mesh sets.

    provider = configure_tracing("routing", settings, os.environ)   # the launcher; None: off
    ...
    await shutdown_tracing()        # on service stop: flushes the queued spans (bounded)

The spans themselves come from the interceptors (``shared.rpc.interceptors.tracing``): a
SERVER span for every handled call, RPC or logical call on an Exchange stream, and a
CLIENT span for every outbound call, joined into one trace per message by W3C
``traceparent``. Services add the decisions they make to the current span::

    trace.get_current_span().set_attribute(tracing.ROUTE_BACKEND, route.backend)

(a no-op when the call is not sampled or tracing is off).

Configuration: the standard ``OTEL_*`` variables when set, else the mesh's settings.

- ``OTEL_SDK_DISABLED=true``, ``telemetry.enabled`` or ``telemetry.tracing_enabled`` false:
  no tracing at all (the interceptors are left out of the chains).
- ``OTEL_TRACES_SAMPLER`` (+ ``OTEL_TRACES_SAMPLER_ARG``): the sampler; else
  ``parentbased_traceidratio`` with ``telemetry.trace_sample_ratio``.
- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``: where spans go
  (OTLP/gRPC, e.g. ``http://collector:4317``); else the metrics service (plaintext).
  ``OTEL_TRACES_EXPORTER=none``: spans are made (trace ids in logs and trailers, context
  propagated) but not exported.
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource.
- ``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_{HEADERS,TIMEOUT,COMPRESSION,CERTIFICATE,INSECURE}``
  are read by the SDK itself from the process environment; without them the batch
  processor exports every ``telemetry.export_interval_s`` with the SDK's bounded queue
  (2048 spans; more are dropped, never waited for) and each export is bounded by
  ``telemetry.export_timeout_s``.

Spans are ended on the request path and exported from the batch processor's thread, never
waited for by a call.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from clawmesh.shared.settings import MeshSettings, SettingsError

# Span attributes (the metrics service indexes traces by REQUEST_ID).
REQUEST_ID = "clawmesh.request_id"
TENANT = "clawmesh.tenant"
TRANSPORT = "clawmesh.transport"              # server spans: "grpc" or "exchange"
RATE_LIMIT = "clawmesh.ratelimit"             # "allowed" | "refused"
RATE_LIMIT_NAME = "clawmesh.ratelimit.limit"  # the refusing limit, or the one with least quota left
DEDUP = "clawmesh.dedup"                      # "new" | "replayed" | "coalesced"
ADMISSION = "clawmesh.admission"              # "admitted" | "refused"
ADMISSION_REASON = "clawmesh.admission.reason"  # e.g. "queue_full", "shed"
# Set (false) when the policy is in shadow mode: the decision was noted, not enforced.
RATE_LIMIT_ENFORCED = "clawmesh.ratelimit.enforced"
DEDUP_ENFORCED = "clawmesh.dedup.enforced"
ADMISSION_ENFORCED = "clawmesh.admission.enforced"
ROUTE = "clawmesh.route"
ROUTE_BACKEND = "clawmesh.route.backend"
ROUTE_MODEL = "clawmesh.route.model"
BACKEND = "clawmesh.backend"
# OpenTelemetry's GenAI conventions for the model call.
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"

SCOPE = "clawmesh"

_SAMPLERS = {
    "always_on": lambda ratio: ALWAYS_ON,
    "always_off": lambda ratio: ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: ParentBased(ALWAYS_ON),
    "parentbased_always_off": lambda ratio: ParentBased(ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: ParentBased(TraceIdRatioBased(ratio)),
}

_installed: TracerProvider | None = None


def installed() -> TracerProvider | None:
    """The provider the interceptors use (None: tracing is off in this process)."""
    return _installed


def install(provider: TracerProvider | None) -> None:
    """Make ``provider`` the one interceptors built from now on use (tests install their own)."""
    global _installed
    _installed = provider


def sampler(env: Mapping[str, str], ratio: float) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` (+ ``_ARG``, default 1.0 as the spec says) or parent-based ``ratio``."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return ParentBased(TraceIdRatioBased(ratio))
    make = _SAMPLERS.get(name)
    if make is None:
        raise SettingsError(f"OTEL_TRACES_SAMPLER: {name!r} is not one of {', '.join(_SAMPLERS)}")
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        value = float(arg) if arg else 1.0
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio between 0 and 1")
    return make(value)


def resource(service: str, env: Mapping[str, str], instance_id: str) -> Resource:
    """service.name (``OTEL_SERVICE_NAME`` wins, then ``OTEL_RESOURCE_ATTRIBUTES``), namespace, instance."""
    attributes = {"service.name": service, "service.namespace": "clawmesh",
                  "service.instance.id": instance_id}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = env["OTEL_SERVICE_NAME"]
    return Resource(attributes)


def enabled(settings: MeshSettings, env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return settings.telemetry.enabled and settings.telemetry.tracing_enabled


def build_provider(service: str, settings: MeshSettings, env: Mapping[str, str],
                   instance_id: str | None = None) -> TracerProvider | None:
    """A tracer provider exporting over OTLP/gRPC in batches, or None when tracing is off."""
    if not enabled(settings, env):
        return None
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name not in ("otlp", "none"):
        raise SettingsError(f"OTEL_TRACES_EXPORTER: {exporter_name!r} is not supported (otlp or none)")
    telemetry = settings.telemetry
    provider = TracerProvider(sampler=sampler(env, telemetry.trace_sample_ratio),
                              resource=resource(service, env, instance_id or uuid.uuid4().hex))
    if exporter_name == "none":
        return provider
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    timeout_set = any(k in env for k in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"))
    from clawmesh.shared.security import active

    mesh = None if endpoint else active()  # the metrics service: mTLS and mesh token as configured
    exporter = OTLPSpanExporter(
        endpoint=endpoint or settings.metrics.target(),
        insecure=None if mesh is None else not mesh.settings.mtls,
        credentials=None if mesh is None else mesh.channel_credentials(),
        headers=None if mesh is None else dict(mesh.call_metadata()) or None,
        timeout=None if timeout_set else telemetry.export_timeout_s,
    )
    delay_ms = None if "OTEL_BSP_SCHEDULE_DELAY" in env else telemetry.export_interval_s * 1000
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    return provider


def configure_tracing(service: str, settings: MeshSettings, env: Mapping[str, str],
                      instance_id: str | None = None) -> TracerProvider | None:
    """Build the process's provider and install it (here and as OpenTelemetry's global one).

    Call it before building the server: the chains pick the provider up when they are made.
    """
    provider = build_provider(service, settings, env, instance_id)
    if provider is not None:
        trace.set_tracer_provider(provider)
    install(provider)
    return provider


async def shutdown_tracing() -> None:
    """Export what is queued and stop (bounded by the export timeout); off the event loop."""
    provider = _installed
    if provider is not None:
        install(None)
        await asyncio.to_thread(provider.shutdown)


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits ("" when there is none)."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
