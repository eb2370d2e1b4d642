"""The server factory every service uses.

    server = create_server(settings.memory, [(add_MemoryServiceServicer_to_server, servicer)],
                           ["clawmesh.memory.v1.MemoryService"], server_chain(stats))
    await server.start()            # health SERVING for "" and each service
    ...
    await server.stop()             # health NOT_SERVING, refuse new calls, drain in-flight

The interceptor chain is applied to each method's handler once, here, when it
is registered (no per-call interceptor work in gRPC's own machinery). A service
whose contract declares ``Exchange`` gets it served generically from its own
wrapped handlers (``shared.rpc.exchange_server``). grpc.health.v1 (per-service
status) and server reflection (v1 and v1alpha) are on every server, so grpcurl,
ghz and Kubernetes probes need no extra files.

Security comes from the process's (``shared.security.active()``, or ``security=``): an
ingest server (the edge) serves TLS when ``security.tls``, the others mTLS (client
certificates of the mesh CA only) when ``security.mtls``, each from its certificate files,
re-read when renewed; with TLS and ``security.health_port`` a plaintext port serves only
grpc.health.v1 for Kubernetes probes. Metadata size and concurrent streams per connection
are bounded by ``security.max_metadata_bytes`` / ``max_concurrent_streams``.

A request body (or stream message) that does not decode is answered INVALID_ARGUMENT
naming ``request`` — not gRPC's UNKNOWN with an error traceback logged per call, which
would let any client flood the logs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clawmesh.shared import metadata as md
from clawmesh.shared.errors import InvalidArgument
from clawmesh.shared.rpc.chain import HandlerCapture, HandlerInterceptor, wrap_method
from clawmesh.shared.rpc.exchange_server import Sessions, exchange_handler
from clawmesh.shared.rpc.interceptors.auth import edge
from clawmesh.shared.rpc.reflection import enable_reflection
from clawmesh.shared.security import Security, active, is_activated
from clawmesh.shared.settings import ServerSettings

log = logging.getLogger(__name__)

CLOSER_TIMEOUT_S = 5.0  # per on_stop closer (stores, channels, exporters)

AddFn = Callable[[object, grpc.aio.Server], None]


class MeshServer:
    """A started-or-not grpc.aio server with health, reflection and graceful stop."""

    def __init__(
        self,
        settings: ServerSettings,
        servicers: Sequence[tuple[AddFn, object]],
        service_names: Sequence[str],
        interceptors: Sequence[HandlerInterceptor] = (),
        security: Security | None = None,
    ) -> None:
        self.settings = settings
        self.security = security or active()
        self.service_names = list(service_names)
        options = [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Accept the clients' 20 s keepalive pings.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),
            ("grpc.server.max_pending_requests", settings.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_requests * 3),
            *self.security.server_options(),
        ]
        self.server = grpc.aio.server(
            options=options, maximum_concurrent_rpcs=settings.max_concurrent_rpcs
        )
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}  # full method -> wrapped handler
        self.sessions = Sessions()  # open Exchange streams
        capture = HandlerCapture()
        for add, servicer in servicers:
            add(servicer, capture)
            capture.check(getattr(add, "__qualname__", repr(add)))
        for service, handlers in capture.handlers.items():
            self._register(service, handlers, list(interceptors))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection([*self.service_names, health.SERVICE_NAME], self.server)
        # The edge (ingest's methods) or an internal service: which TLS, which warnings.
        self.edge = any(edge(method) for method in self.handlers)
        credentials = self.security.server_credentials(self.edge)
        address = f"{settings.host}:{settings.port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")
        self.health_server: grpc.aio.Server | None = None
        self.health_port = None
        if credentials is not None and self.security.settings.health_port is not None:
            self.health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(
                f"{settings.host}:{self.security.settings.health_port}")
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._reloaders: list[Callable[[], Awaitable[None]]] = []
        self._stopped = False

    def _register(self, service: str, handlers: dict, chain: list[HandlerInterceptor]) -> None:
        """Wrap each method's handler in the chain once; serve Exchange from the wrapped ones."""
        wrapped = {name: wrap_method(h, f"/{service}/{name}", chain) for name, h in handlers.items()}
        self.handlers.update({f"/{service}/{n}": h for n, h in wrapped.items()})
        if "Exchange" in wrapped:
            desc = descriptor_pool.Default().FindServiceByName(service)
            response_class = message_factory.GetMessageClass(
                desc.methods_by_name["Exchange"].output_type)
            by_path = {f"/{service}/{n}": h for n, h in wrapped.items() if n != "Exchange"}
            wrapped["Exchange"] = wrap_method(
                exchange_handler(by_path, handlers["Exchange"], response_class, self.sessions),
                f"/{service}/Exchange", [ic for ic in chain if getattr(ic, "wraps_exchange", False)])
        served = {name: decode_guard(h) for name, h in wrapped.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, served),))
        self.server.add_registered_method_handlers(service, served)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def on_reload(self, reloader: Callable[[], Awaitable[None]]) -> None:
        """Run ``reloader`` on SIGHUP (e.g. re-read a policy file); calls in flight go on."""
        self._reloaders.append(reloader)

    async def reload(self) -> None:
        """What SIGHUP does: every reloader, each failure logged, none stopping the server."""
        for reloader in self._reloaders:
            try:
                await reloader()
            except Exception:  # noqa: BLE001 - a bad reload keeps the running configuration
                log.exception("reload failed; keeping the running configuration")

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` after the server has drained (close stores, channels ...)."""
        self._closers.append(closer)

    async def start(self) -> None:
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        if is_activated():  # a service process, not a test's in-process server
            for hole in self.security.insecure(self.edge):
                log.warning("INSECURE: %s (README: Security)", hole)
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        # Exchange streams are long-lived: ask their clients to send new calls
        # elsewhere; the calls already sent finish here, then the streams close.
        self.sessions.drain()
        grace = self.settings.grace_period_s if grace_s is None else grace_s
        started = time.monotonic()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        log.info("drained", extra={"seconds": round(time.monotonic() - started, 3)})
        for closer in reversed(self._closers):
            name = getattr(closer, "__qualname__", repr(closer))
            try:
                # A closer that hangs must not keep the process from exiting.
                await asyncio.wait_for(closer(), CLOSER_TIMEOUT_S)
            except TimeoutError:
                log.warning("closer timed out", extra={"closer": name, "seconds": CLOSER_TIMEOUT_S})
            except Exception:  # noqa: BLE001 - keep closing the rest
                log.exception("error while closing", extra={"closer": name})

    async def serve_until_signal(self, on_serving: Callable[[], None] | None = None) -> None:
        """Start, run until SIGTERM/SIGINT, then stop gracefully.

        ``on_serving`` runs once the server is SERVING (e.g. freezing the start-up heap).
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task] = set()

        def hup() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hup)
        await self.start()
        if on_serving is not None:
            on_serving()
        log.info("serving", extra={"address": self.address, "services": self.service_names})
        await stop.wait()
        log.info("stopping", extra={"grace_s": self.settings.grace_period_s})
        await self.stop()
        log.info("stopped")


class Undecodable:
    """What a request body that does not decode becomes (instead of an exception in gRPC)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and whatever a parser raises
            return Undecodable(str(exc)[:200])

    return parse


async def _refuse(context, request: Undecodable):
    status = InvalidArgument("request", f"does not decode: {request.error}").to_status()
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, status.message,
                        trailing_metadata=((md.STATUS_DETAILS, status.SerializeToString()),))


def decode_guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` answering an undecodable request (or stream message) INVALID_ARGUMENT."""
    if handler.request_deserializer is None:
        return handler
    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    unary_request = handler.unary_unary is not None or handler.unary_stream is not None

    async def checked(requests, context):
        async for request in requests:
            if type(request) is Undecodable:
                await _refuse(context, request)
            yield request

    async def admitted(request, context):
        """The request, or for a request stream the stream with every message checked."""
        if not unary_request:
            return checked(request, context)
        if type(request) is Undecodable:
            await _refuse(context, request)
        return request

    if handler.unary_unary or handler.stream_unary:
        async def behavior(request, context):
            return await inner(await admitted(request, context), context)
    else:
        async def behavior(request, context):
            async for response in inner(await admitted(request, context), context):
                yield response

    make = (grpc.unary_unary_rpc_method_handler if handler.unary_unary else
            grpc.stream_unary_rpc_method_handler if handler.stream_unary else
            grpc.unary_stream_rpc_method_handler if handler.unary_stream else
            grpc.stream_stream_rpc_method_handler)
    return make(behavior, request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer)


def create_server(
    settings: ServerSettings,
    servicers: Sequence[tuple[AddFn, object]],
    service_names: Sequence[str],
    interceptors: Sequence[HandlerInterceptor] = (),
    security: Security | None = None,
) -> MeshServer:
    """Build (not start) a server for the given servicers (``security``: the process's)."""
    return MeshServer(settings, servicers, service_names, interceptors, security)
