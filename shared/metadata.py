"""Every gRPC metadata key ClawMesh reads or writes, in one place.

Keys are lower-case; our own are prefixed ``x-clawmesh-``. Clients in any
language set these as ordinary gRPC metadata.

| key                        | direction          | meaning                                       |
|----------------------------|--------------------|-----------------------------------------------|
| x-clawmesh-tenant          | request, every hop | tenant (from credentials at the edge)         |
| x-clawmesh-request-id      | request + response | mesh request id; made at ingest if absent     |
| x-clawmesh-idempotency-key | request, every hop | the caller's idempotency key (the body field  |
|                            |                    | ``message.idempotency_key`` wins); ingest     |
|                            |                    | sets the scoped key on the hops behind it     |
| x-clawmesh-priority        | request, every hop | priority class name, e.g. ``high``            |
| x-clawmesh-synthetic       | request            | ``true`` marks load-test traffic              |
| x-clawmesh-replayed        | trailing           | ``true`` when a stored reply was replayed     |
| x-clawmesh-quota-remaining | trailing (Submit)  | requests the tightest rate limit still admits |
| traceparent / tracestate   | request, every hop | W3C trace context: each hop sends its own     |
|                            |                    | client span's (the inbound one when tracing   |
|                            |                    | is off)                                       |
| x-clawmesh-trace-id        | trailing (Submit,  | the message's trace id (32 hex digits) when   |
|                            | SubmitStream)      | tracing is on; recorded if sampled            |
| grpc-status-details-bin    | trailing           | google.rpc.Status with rich error details     |
| authorization              | request (ingest)   | ``Bearer <API key>``; never passed on         |
|                            |                    | (shared.security: the tenant comes from it)   |
| x-clawmesh-mesh-token      | request, internal  | the mesh token, when one is set and TLS is    |
|                            | services           | off; added by the channels, never propagated  |
"""

from __future__ import annotations

TENANT = "x-clawmesh-tenant"
REQUEST_ID = "x-clawmesh-request-id"
IDEMPOTENCY_KEY = "x-clawmesh-idempotency-key"
PRIORITY = "x-clawmesh-priority"
SYNTHETIC = "x-clawmesh-synthetic"
REPLAYED = "x-clawmesh-replayed"
QUOTA_REMAINING = "x-clawmesh-quota-remaining"
# Trailer on an error this service passes on from a call it made (or refused to make:
# an open breaker, a spent deadline): the peer that answered is healthy, so the caller's
# circuit breaker does not count it against it (no cascade of breakers up the mesh).
FAULT_ORIGIN = "x-clawmesh-fault-origin"
# The attempt number of a call that its caller retries (1, 2, ...). Propagated down the
# call tree: a hop serving a call that an outer hop retries never retries its own calls,
# so a failure deep in the mesh is retried at one layer only (N attempts, not N²).
ATTEMPT = "x-clawmesh-attempt"
TRACE_ID = "x-clawmesh-trace-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
STATUS_DETAILS = "grpc-status-details-bin"

# Keys copied from an inbound call onto every outbound call it makes.
PROPAGATED = (TENANT, REQUEST_ID, IDEMPOTENCY_KEY, PRIORITY, SYNTHETIC, ATTEMPT, TRACEPARENT, TRACESTATE)


def to_dict(metadata) -> dict[str, str]:
    """Invocation metadata as a dict of text values (binary ``-bin`` keys are skipped)."""
    out: dict[str, str] = {}
    for item in metadata or ():
        key, value = item
        if not key.endswith("-bin"):
            out[key] = value
    return out
