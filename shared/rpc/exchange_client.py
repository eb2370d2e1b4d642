"""Client side of the Exchange streams: a transport that multiplexes logical calls.

    transport = ExchangeTransport(channel, "clawmesh.memory.v1.MemoryService")
    client = MemoryClient(transport, chain)       # same typed client as over UnaryTransport

A pool of ``streams`` long-lived streams per target; calls are spread over
them round-robin. Each stream is opened on the channel, whose round_robin load
balancing places it on the next replica the resolver returned, so the calls of
a pool spread over the replicas; a stream older than ``max_age_s`` takes no new
calls and closes when its last call ends, so replicas added later get traffic.
Frames queued while a write is in flight go out together (coalescing).

A logical call behaves like an RPC: the timeout travels to the server (which
enforces it too) and is enforced here; cancelling the awaiting task sends a
CANCEL frame; a failed call raises ``grpc.aio.AioRpcError`` with the server's
code, message and ``grpc-status-details-bin``; a broken stream fails its open
calls with UNAVAILABLE and the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import descriptor_pool, message_factory

from clawmesh.shared import metadata as md
from clawmesh.shared.errors import CODES as _CODE
from clawmesh.shared.rpc.client import Call
from clawmesh.shared.rpc.exchange_server import CANCEL, END, REQUEST, Frame

_EMPTY = grpc.aio.Metadata()


def _error(code: grpc.StatusCode, message: str, trailing: grpc.aio.Metadata = _EMPTY):
    return grpc.aio.AioRpcError(code, _EMPTY, trailing, message)


def _failure(frame: Frame) -> grpc.aio.AioRpcError:
    status = frame.status
    trailing = [(k, v) for k, v in frame.metadata.items()]
    if status.details:
        trailing.append((md.STATUS_DETAILS, status.SerializeToString()))
    return _error(_CODE.get(status.code, grpc.StatusCode.UNKNOWN), status.message,
                  grpc.aio.Metadata(*trailing))


class _Expired(Exception):
    """A logical call's timeout fired before its answer came."""


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(_Expired())


class _Stream:
    """One Exchange stream and the calls open on it."""

    def __init__(self, channel: grpc.aio.Channel, method: str, request_class, response_class,
                 clock=time.monotonic):
        self.call = channel.stream_stream(
            method, request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )()
        self.request_class = request_class
        self.clock = clock
        self.born = clock()
        self.writes = 0  # messages written; < frames sent when coalescing
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future | asyncio.Queue] = {}
        self.out: list[Frame] = []
        self.wake = asyncio.Event()
        self.dead: grpc.aio.AioRpcError | None = None
        self.draining = False
        self.loop = loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write())
        self.reader = loop.create_task(self._read())

    def send(self, frame: Frame) -> None:
        self.out.append(frame)
        self.wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self.wake.wait()
                # One more turn of the loop: calls started by the same burst of
                # ready callbacks join this write instead of waiting for the next.
                await asyncio.sleep(0)
                self.wake.clear()
                if self.out:
                    batch, self.out = self.out, []
                    self.writes += 1
                    await self.call.write(self.request_class(frames=batch))
                elif self.draining and not self.waiting:
                    await self.call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass  # the reader sees why the stream ended and fails the open calls

    async def _read(self) -> None:
        error = _error(grpc.StatusCode.UNAVAILABLE, "exchange stream ended")
        try:
            async for response in self.call:
                for frame in response.frames:
                    if frame.call_id == 0:  # the server is draining: no new calls here
                        self.draining = True
                        continue
                    waiter = self.waiting.get(frame.call_id)
                    if waiter is None:
                        continue  # a call that was cancelled or timed out here
                    if isinstance(waiter, asyncio.Queue):
                        waiter.put_nowait(frame)
                        if frame.kind == END:
                            del self.waiting[frame.call_id]
                    else:
                        del self.waiting[frame.call_id]
                        if not waiter.done():
                            waiter.set_result(frame)
                self._maybe_close()
        except grpc.aio.AioRpcError as exc:
            error = _error(grpc.StatusCode.UNAVAILABLE,
                           f"exchange stream failed: {exc.code().name}: {exc.details()}")
        except asyncio.CancelledError:
            error = _error(grpc.StatusCode.CANCELLED, "exchange stream closed")
            raise
        finally:
            self.dead = error
            self.writer.cancel()
            for waiter in self.waiting.values():
                if isinstance(waiter, asyncio.Queue):
                    waiter.put_nowait(error)
                elif not waiter.done():
                    waiter.set_exception(error)
            self.waiting.clear()

    def _maybe_close(self) -> None:
        if self.draining and not self.waiting:
            self.wake.set()

    def usable(self, max_age_s: float) -> bool:
        if self.dead is not None or self.draining:
            return False
        if self.clock() - self.born > max_age_s:
            self.draining = True
            self._maybe_close()
            return False
        return True

    def _request(self, call: Call, call_id: int) -> Frame:
        frame = Frame(call_id=call_id, kind=REQUEST, method=call.method,
                      payload=call.request.SerializeToString())
        if call.timeout is not None:
            frame.timeout_us = max(int(call.timeout * 1e6), 1)
        if call.metadata:
            frame.metadata.update(call.metadata)
        return frame

    def forget(self, call_id: int) -> None:
        """The caller gave up: tell the server, stop waiting."""
        if self.waiting.pop(call_id, None) is not None and self.dead is None:
            self.send(Frame(call_id=call_id, kind=CANCEL))
        self._maybe_close()

    async def unary(self, call: Call):
        call_id = next(self.ids)
        future = self.loop.create_future()
        self.waiting[call_id] = future
        self.send(self._request(call, call_id))
        # A timer on the future rather than asyncio.timeout(): no task lookups per call.
        timer = None if call.timeout is None else self.loop.call_later(
            call.timeout, _expire, future)
        try:
            frame = await future
        except _Expired:
            self.forget(call_id)
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            self.forget(call_id)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if frame.status.code:
            raise _failure(frame)
        return call.response_class.FromString(frame.payload)

    async def stream(self, call: Call) -> AsyncIterator:
        call_id = next(self.ids)
        queue: asyncio.Queue = asyncio.Queue()
        self.waiting[call_id] = queue
        self.send(self._request(call, call_id))
        deadline = None if call.timeout is None else self.loop.time() + call.timeout
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        frame = await queue.get()
                except TimeoutError:
                    raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
                if isinstance(frame, grpc.aio.AioRpcError):
                    finished = True
                    raise frame
                if frame.kind == END:
                    finished = True
                    if frame.status.code:
                        raise _failure(frame)
                    return
                yield call.response_class.FromString(frame.payload)
        finally:
            if not finished:
                self.forget(call_id)

    async def close(self) -> None:
        self.draining = True
        self._maybe_close()
        try:
            await asyncio.wait_for(asyncio.shield(self.reader), 1.0)
        except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
            self.call.cancel()
            self.reader.cancel()


class ExchangeTransport:
    """Logical calls of one service, multiplexed over a pool of Exchange streams."""

    def __init__(self, channel: grpc.aio.Channel, service: str, streams: int = 4,
                 max_age_s: float = 60.0, clock=time.monotonic) -> None:
        svc = descriptor_pool.Default().FindServiceByName(service)
        exchange = svc.methods_by_name["Exchange"]
        self.channel = channel
        self.method = f"/{service}/Exchange"
        self.request_class = message_factory.GetMessageClass(exchange.input_type)
        self.response_class = message_factory.GetMessageClass(exchange.output_type)
        self.max_age_s = max_age_s
        self.clock = clock
        self.slots: list[_Stream | None] = [None] * streams
        self.turn = itertools.cycle(range(streams))
        self.retired: set[_Stream] = set()
        self._sticky: _Stream | None = None

    def _stream(self) -> _Stream:
        # Calls started in the same turn of the event loop share a stream (and so a
        # write); the next turn moves on to the next stream. Round-robin per turn keeps
        # the spread over streams (and replicas) without splitting bursts into many
        # small writes.
        sticky = self._sticky
        if sticky is not None and sticky.dead is None and not sticky.draining:
            return sticky
        stream = self._next()
        self._sticky = stream
        stream.loop.call_soon(self._unstick)
        return stream

    def _unstick(self) -> None:
        self._sticky = None

    def _next(self) -> _Stream:
        slot = next(self.turn)
        stream = self.slots[slot]
        if stream is None or not stream.usable(self.max_age_s):
            if stream is not None and stream.dead is None:
                self.retired.add(stream)  # draining: closes after its last call
            self.retired = {s for s in self.retired if s.dead is None}
            stream = _Stream(self.channel, self.method, self.request_class, self.response_class,
                             self.clock)
            self.slots[slot] = stream
        return stream

    async def unary(self, call: Call):
        return await self._stream().unary(call)

    def stream(self, call: Call) -> AsyncIterator:
        return self._stream().stream(call)

    def open_streams(self) -> int:
        return sum(1 for s in self.slots if s is not None and s.dead is None)

    async def close(self) -> None:
        streams = [s for s in (*self.slots, *self.retired) if s is not None]
        self.slots = [None] * len(self.slots)
        self.retired = set()
        await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)
