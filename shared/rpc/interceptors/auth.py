"""Who may call: the API key at the edge, the mesh token on internal services.

    chain = [..., ErrorInterceptor(), *auth_interceptors(), DeadlineInterceptor(5.0)]

``ApiKeyInterceptor`` applies to ingest's methods only (the edge): the tenant of the key
in ``authorization: Bearer <key>`` becomes the call's ``x-clawmesh-tenant`` (what every
hop behind it sees); a caller claiming another tenant gets PERMISSION_DENIED; a missing,
unknown, revoked or expired key UNAUTHENTICATED, with the same message for all but a
missing one. A Converse stream is authenticated once, when it opens.

``MeshTokenInterceptor`` applies to every other service's methods when a mesh token is
set: a call without ``x-clawmesh-mesh-token`` gets UNAUTHENTICATED. It also guards the
Exchange streams themselves (the server wraps them with it: ``wraps_exchange``), and lets
the logical calls inside a stream through, since the stream already carried the token.
Health and reflection bypass both, so probes and tools keep working.
"""

from __future__ import annotations

import grpc

from clawmesh.shared import context as callctx
from clawmesh.shared import metadata as md
from clawmesh.shared.errors import Internal, PermissionDenied
from clawmesh.shared.rpc.chain import HandlerInterceptor
from clawmesh.shared.rpc.exchange_server import ExchangeContext
from clawmesh.shared.rpc.filters import Filter, any_of, infrastructure, prefixes
from clawmesh.shared.security import AUTHORIZATION, KeyStore, Security, active

#: The edge's methods: where API keys are checked, and what the mesh token never guards.
edge: Filter = prefixes("/clawmesh.ingest.")

NOT_FROM_MESH = "this service accepts calls from the mesh only"


class ApiKeyInterceptor(HandlerInterceptor):
    """The tenant from the caller's API key, at the edge."""

    def __init__(self, keys: KeyStore) -> None:
        super().__init__(bypass=lambda method: not edge(method))
        self.keys = keys

    def _authenticate(self) -> None:
        info = callctx.current()
        if info is None:
            raise Internal("the API key check needs the context interceptor before it")
        headers = info.headers
        tenant = self.keys.authenticate(headers.get(AUTHORIZATION))
        claimed = headers.get(md.TENANT)
        if claimed and claimed != tenant:
            raise PermissionDenied(f"x-clawmesh-tenant {claimed[:64]!r} is not the tenant of this API key")
        headers[md.TENANT] = tenant

    async def unary(self, method, call_next, request, context):
        self._authenticate()
        return await call_next(request, context)

    async def stream(self, method, call_next, request, context):
        self._authenticate()
        async for response in call_next(request, context):
            yield response


class MeshTokenInterceptor(HandlerInterceptor):
    """Internal services: calls must carry the mesh token."""

    wraps_exchange = True  # the server also wraps the Exchange streams with it

    def __init__(self, security: Security) -> None:
        super().__init__(bypass=any_of(infrastructure, edge))
        self.security = security

    async def _check(self, context) -> None:
        if isinstance(context, ExchangeContext):
            return  # a logical call: its stream was checked when it opened
        if not self.security.token_ok(context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, NOT_FROM_MESH)

    async def unary(self, method, call_next, request, context):
        await self._check(context)
        return await call_next(request, context)

    async def stream(self, method, call_next, request, context):
        await self._check(context)
        async for response in call_next(request, context):
            yield response


def auth_interceptors(security: Security | None = None) -> list[HandlerInterceptor]:
    """The checks the process's security settings ask for (none in dev mode)."""
    security = security or active()
    out: list[HandlerInterceptor] = []
    keys = security.keys()
    if keys is not None:
        out.append(ApiKeyInterceptor(keys))
    if security.mesh_token:
        out.append(MeshTokenInterceptor(security))
    return out
