"""Server side of the Exchange streams: many logical calls on one long-lived stream.

Every internal service declares ``rpc Exchange(stream ExchangeRequest) returns
(stream ExchangeResponse)``; the server factory serves it generically from the
service's own (already chain-wrapped) method handlers, so a logical call runs
exactly the code an RPC of the same method runs — interceptors included — and
keeps its deadline, cancellation, metadata and status with details
(``clawmesh.common.v1.Frame`` is the framing). Responses finished while a write
is in flight go out together in the next write (coalescing).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from clawmesh.common.v1 import exchange_pb2
from clawmesh.shared import metadata as md

log = logging.getLogger(__name__)

REQUEST = exchange_pb2.FRAME_KIND_REQUEST
MESSAGE = exchange_pb2.FRAME_KIND_MESSAGE
END = exchange_pb2.FRAME_KIND_END
CANCEL = exchange_pb2.FRAME_KIND_CANCEL
Frame = exchange_pb2.Frame



class ExchangeAbort(grpc.aio.AbortError):
    """Raised by ``ExchangeContext.abort``; the call ends with the chosen status."""


class ExchangeContext:
    """The ``grpc.aio.ServicerContext`` subset a handler sees for a logical call."""

    __slots__ = ("headers", "deadline", "_code", "_details", "_trailing", "_peer")

    def __init__(self, headers: dict[str, str], deadline: float | None, peer: str) -> None:
        self.headers = headers  # the call's metadata as a dict (no per-call rebuilding)
        self.deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple = ()
        self._peer = peer

    def invocation_metadata(self):
        return tuple(self.headers.items())

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing_metadata)
        raise ExchangeAbort()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self):
        return self._trailing

    async def send_initial_metadata(self, metadata) -> None:
        """Initial metadata has no frame of its own; it travels with the END frame."""
        self._trailing = (*self._trailing, *metadata)

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


def _end(call_id: int, code: grpc.StatusCode, message: str, trailing=()) -> Frame:
    frame = Frame(call_id=call_id, kind=END)
    frame.status.code = code.value[0]
    frame.status.message = message
    for key, value in trailing:
        if key == md.STATUS_DETAILS:
            # google.rpc.Status and ErrorStatus share one wire format.
            frame.status.MergeFromString(value)
            frame.status.code = code.value[0]
        elif not key.endswith("-bin"):
            frame.metadata[key] = value
    return frame


def goaway_frame() -> Frame:
    """Call id 0: "this stream takes no new calls" (the server is draining)."""
    frame = Frame(call_id=0, kind=END)
    frame.status.code = grpc.StatusCode.UNAVAILABLE.value[0]
    frame.status.message = "server draining: open a new stream"
    return frame


class _Session:
    """One Exchange stream being served."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], response_class, peer: str):
        self.handlers = handlers
        self.response_class = response_class
        self.peer = peer
        self.out: list[Frame] = []
        self.wake = asyncio.Event()
        self.calls: dict[int, asyncio.Task] = {}
        self.expired: set[int] = set()
        self.reading = True
        self.loop = asyncio.get_running_loop()

    def goaway(self) -> None:
        """Draining: tell the client to take new calls elsewhere; open calls finish here."""
        self.emit(goaway_frame())

    def emit(self, frame: Frame) -> None:
        self.out.append(frame)
        self.wake.set()

    async def read(self, request_iterator) -> None:
        try:
            async for request in request_iterator:
                for frame in request.frames:
                    if frame.kind == REQUEST:
                        self.start(frame)
                    elif frame.kind == CANCEL:
                        task = self.calls.get(frame.call_id)
                        if task is not None:
                            task.cancel()
                    else:  # the stream and the other calls go on
                        self.emit(_end(frame.call_id, grpc.StatusCode.INVALID_ARGUMENT,
                                       f"frame.kind: {frame.kind} is not a client frame kind"))
        finally:
            self.reading = False
            self.wake.set()

    def start(self, frame: Frame) -> None:
        call_id = frame.call_id
        if call_id == 0 or call_id in self.calls:
            why = "0 is reserved" if call_id == 0 else "already names an open call"
            self.emit(_end(call_id, grpc.StatusCode.INVALID_ARGUMENT, f"frame.call_id: {why}"))
            return
        handler = self.handlers.get(frame.method)
        if handler is None or not (handler.unary_unary or handler.unary_stream):
            what = "unknown method" if handler is None else "not callable on Exchange"
            self.emit(_end(call_id, grpc.StatusCode.UNIMPLEMENTED, f"{frame.method}: {what}"))
            return
        timeout = frame.timeout_us / 1e6
        ctx = ExchangeContext(dict(frame.metadata), time.monotonic() + timeout if timeout else None,
                              self.peer)
        task = self.loop.create_task(self.run(call_id, handler, frame.payload, ctx))
        self.calls[call_id] = task
        timer = self.loop.call_later(timeout, self._expire, call_id) if timeout else None
        task.add_done_callback(lambda _t, cid=call_id, t=timer: self._finished(cid, t))

    def _expire(self, call_id: int) -> None:
        task = self.calls.get(call_id)
        if task is not None:
            self.expired.add(call_id)
            task.cancel()

    def _finished(self, call_id: int, timer) -> None:
        if timer is not None:
            timer.cancel()
        self.calls.pop(call_id, None)
        self.expired.discard(call_id)
        if not self.reading and not self.calls:
            self.wake.set()

    async def run(self, call_id: int, handler, payload: bytes, ctx: ExchangeContext) -> None:
        try:
            try:
                request = handler.request_deserializer(payload)
            except Exception:  # noqa: BLE001 - as gRPC does for undecodable bytes
                self.emit(_end(call_id, grpc.StatusCode.INTERNAL, "failed to deserialize request"))
                return
            serialize = handler.response_serializer
            if handler.unary_unary:
                response = await handler.unary_unary(request, ctx)
                frame = _end(call_id, grpc.StatusCode.OK, "", ctx.trailing_metadata())
                frame.payload = serialize(response)
                self.emit(frame)
            else:
                async for response in handler.unary_stream(request, ctx):
                    self.emit(Frame(call_id=call_id, kind=MESSAGE, payload=serialize(response)))
                self.emit(_end(call_id, grpc.StatusCode.OK, "", ctx.trailing_metadata()))
        except ExchangeAbort:
            self.emit(_end(call_id, ctx.code() or grpc.StatusCode.UNKNOWN, ctx.details(),
                           ctx.trailing_metadata()))
        except asyncio.CancelledError:
            if call_id in self.expired:
                self.emit(_end(call_id, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))
            else:  # the caller cancelled: it is no longer listening
                self.emit(_end(call_id, grpc.StatusCode.CANCELLED, "cancelled by the caller"))
        except Exception:  # noqa: BLE001 - the chain maps errors; this is a last resort
            log.exception("unhandled error in Exchange call %s", call_id)
            self.emit(_end(call_id, grpc.StatusCode.INTERNAL, "internal error"))

    async def serve(self, request_iterator):
        reader = self.loop.create_task(self.read(request_iterator))
        try:
            while True:
                await self.wake.wait()
                await asyncio.sleep(0)  # let answers finishing in this turn join the write
                self.wake.clear()
                if self.out:
                    batch, self.out = self.out, []
                    yield self.response_class(frames=batch)
                    continue
                if not self.reading and not self.calls:
                    break
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            for task in list(self.calls.values()):
                task.cancel()


class Sessions:
    """The Exchange streams a server is serving, so a graceful stop can drain them."""

    def __init__(self) -> None:
        self.open: set[_Session] = set()
        self.draining = False

    def drain(self) -> None:
        self.draining = True
        for session in self.open:
            session.goaway()


def exchange_handler(handlers: dict[str, grpc.RpcMethodHandler], exchange: grpc.RpcMethodHandler,
                     response_class, sessions: Sessions) -> grpc.RpcMethodHandler:
    """The Exchange method of a service whose (wrapped) methods are ``handlers``."""

    async def behavior(request_iterator, context):
        session = _Session(handlers, response_class, context.peer())
        sessions.open.add(session)
        if sessions.draining:
            session.goaway()
        try:
            async for response in session.serve(request_iterator):
                yield response
        finally:
            sessions.open.discard(session)

    return grpc.stream_stream_rpc_method_handler(
        behavior, request_deserializer=exchange.request_deserializer,
        response_serializer=exchange.response_serializer,
    )


__all__ = ["ExchangeAbort", "ExchangeContext", "Sessions", "exchange_handler"]
