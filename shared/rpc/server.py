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

from clawmesh.shared.rpc.chain import HandlerCapture, HandlerInterceptor, wrap_method
from clawmesh.shared.rpc.exchange_server import Sessions, exchange_handler
from clawmesh.shared.rpc.reflection import enable_reflection
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
    ) -> None:
        self.settings = settings
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
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")
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
            wrapped["Exchange"] = exchange_handler(by_path, handlers["Exchange"], response_class,
                                                   self.sessions)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),))
        self.server.add_registered_method_handlers(service, wrapped)

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


def create_server(
    settings: ServerSettings,
    servicers: Sequence[tuple[AddFn, object]],
    service_names: Sequence[str],
    interceptors: Sequence[HandlerInterceptor] = (),
) -> MeshServer:
    """Build (not start) a server for the given servicers."""
    return MeshServer(settings, servicers, service_names, interceptors)
