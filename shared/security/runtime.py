"""The process's security: what its servers serve and what its outbound channels present.

    activate(Security(settings.security, "routing"))   # once, at start (`clawmesh serve`)
    sec = active()                                     # servers, channel pools, exporters
    channel = sec.channel("memory:50054", options)     # TLS + client cert with mtls, token if set

Every process has one identity: the service it runs (its certificate directory is
``cert_dir/<service>``), or ``client`` for the CLI and tests. Nothing activated (in-process
tests, the in-process bound) is the dev mode: plaintext, no keys, no token.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from clawmesh.shared.security.certs import CLIENT
from clawmesh.shared.security.keys import KeyStore, read_secret
from clawmesh.shared.security.tls import channel_credentials, reloading_server_credentials
from clawmesh.shared.settings import SecuritySettings

MESH_TOKEN = "x-clawmesh-mesh-token"
AUTHORIZATION = "authorization"


class Security:
    """One process's security settings and identity; ``clock`` (epoch seconds) decides key expiry."""

    def __init__(self, settings: SecuritySettings | None = None, identity: str = CLIENT,
                 clock=time.time) -> None:
        self.settings = settings or SecuritySettings()
        self.identity = identity
        self.clock = clock
        self.mesh_token = read_secret(self.settings.mesh_token.get_secret_value(),
                                      self.settings.mesh_token_file)
        self._keys: KeyStore | None = None

    def directory(self, identity: str | None = None) -> Path:
        return self.settings.cert_dir / (identity or self.identity)

    def keys(self) -> KeyStore | None:
        """The edge's API keys (one store per process, so a reload reaches every user)."""
        if self.settings.auth != "api_key":
            return None
        if self._keys is None:
            self._keys = KeyStore(self.settings, clock=self.clock)
        return self._keys

    def server_credentials(self, edge: bool) -> grpc.ServerCredentials | None:
        """TLS for the edge when ``tls``; for internal services mTLS when ``mtls``; else None."""
        if edge and self.settings.tls:
            return reloading_server_credentials(self.directory(), require_client_auth=False)
        if not edge and self.settings.mtls:
            return reloading_server_credentials(self.directory(), require_client_auth=True)
        return None

    def server_options(self) -> list[tuple[str, int]]:
        s = self.settings
        options = [("grpc.max_metadata_size", s.max_metadata_bytes),
                   ("grpc.absolute_max_metadata_size", s.max_metadata_bytes)]
        if s.max_concurrent_streams is not None:
            options.append(("grpc.max_concurrent_streams", s.max_concurrent_streams))
        return options

    def channel_credentials(self, edge: bool = False) -> grpc.ChannelCredentials | None:
        """How this identity calls the edge (``edge``) or an internal service; None: plaintext."""
        if not (self.settings.tls if edge else self.settings.mtls):
            return None
        return channel_credentials(self.directory(), with_certificate=not edge)

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call to an internal service carries besides its own metadata."""
        return ((MESH_TOKEN, self.mesh_token),) if self.mesh_token else ()

    def channel(self, target: str, options: Sequence = (), edge: bool = False) -> grpc.aio.Channel:
        """A grpc.aio channel to a mesh service: TLS and the mesh token as configured."""
        token = self.mesh_token and not edge
        interceptors = token_interceptors(self.call_metadata()) if token else None
        credentials = self.channel_credentials(edge)
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
        return grpc.aio.secure_channel(target, credentials, options=list(options), interceptors=interceptors)

    def token_ok(self, metadata) -> bool:
        """Whether call ``metadata`` carries the mesh token (always, when none is configured)."""
        if not self.mesh_token:
            return True
        for key, value in metadata or ():
            if key == MESH_TOKEN and isinstance(value, str):
                return hmac.compare_digest(value.encode(), self.mesh_token.encode())
        return False

    def insecure(self, edge: bool) -> list[str]:
        """What this configuration leaves open, for the startup warning and `clawmesh up`."""
        s, out = self.settings, []
        if edge and s.auth == "dev":
            out.append("no API keys: any caller may use ingest and claim any tenant (security.auth: dev)")
        if edge and not s.tls:
            out.append("ingest's port is plaintext (security.tls: false)")
        if not edge and not s.mtls and not self.mesh_token:
            out.append("internal services trust any caller that reaches their ports "
                       "(no security.mtls, no security.mesh_token)")
        elif not edge and not s.mtls:
            out.append("mesh calls are plaintext; the mesh token travels in clear (security.mtls: false)")
        return out


class _Token:
    """Adds the mesh token to an RPC's metadata (an Exchange stream carries it once)."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *self.pairs))


class _TokenUnaryUnary(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _TokenUnaryStream(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _TokenStreamUnary(_Token, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _TokenStreamStream(_Token, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def token_interceptors(pairs: tuple[tuple[str, str], ...]) -> list:
    """Channel interceptors adding ``pairs`` to every RPC: one per call shape, as grpc.aio files
    each interceptor under the first shape it implements only."""
    shapes = (_TokenUnaryUnary, _TokenUnaryStream, _TokenStreamUnary, _TokenStreamStream)
    return [cls(pairs) for cls in shapes]


_active = Security()
_activated = False


def active() -> Security:
    """The process's security (dev mode when nothing was activated)."""
    return _active


def is_activated() -> bool:
    return _activated


def activate(security: Security) -> Security:
    """Make ``security`` the process's; returns the previous one."""
    global _active, _activated
    previous, _active, _activated = _active, security, True
    return previous


@contextlib.contextmanager
def activated(security: Security) -> Iterator[Security]:
    """``security`` while building servers and pools in a test, then the previous one again."""
    global _active, _activated
    previous, was = _active, _activated
    activate(security)
    try:
        yield security
    finally:
        _active, _activated = previous, was
