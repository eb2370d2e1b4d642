"""Thin IngestService servicer: decode, call the core, encode.

Every admitted message's answer carries ``x-clawmesh-request-id`` (the caller's
own, or one made here): in SubmitStream's initial metadata, as soon as the
message is admitted; in Submit's trailing metadata (a unary answer arrives all
at once, and an extra initial-metadata send costs ~18 % of ingest's CPU). With tracing
on, Submit and SubmitStream also answer with the message's trace id in the
``x-clawmesh-trace-id`` trailer; each Converse message is a trace of its own.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.services.ingest.core import Ingest
from clawmesh.shared import context as callctx
from clawmesh.shared import metadata as md
from clawmesh.shared.errors import ClawMeshError, status_of
from clawmesh.shared.rpc.interceptors.tracing import message_span
from clawmesh.shared.tracing import current_trace_id

CONVERSE = "/clawmesh.ingest.v1.IngestService/Converse"


def _headers(context) -> dict[str, str]:
    """The call's metadata, as the context interceptor already parsed it."""
    info = callctx.current()
    return info.headers if info is not None else md.to_dict(context.invocation_metadata())


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """``clawmesh.ingest.v1.IngestService`` over the ``Ingest`` core."""

    def __init__(self, ingest: Ingest, converse_max_in_flight: int) -> None:
        self.ingest = ingest
        self.converse_max_in_flight = converse_max_in_flight

    async def Submit(self, request, context):
        """One message in, its reply out. Bad input: INVALID_ARGUMENT naming the fields."""
        forward, out, dedupable = self.ingest.admit(request.message, request.HasField("message"),
                                                    _headers(context))
        trailing = [(md.REQUEST_ID, out[md.REQUEST_ID])]
        if trace_id := current_trace_id():
            trailing.append((md.TRACE_ID, trace_id))
        context.set_trailing_metadata(trailing)
        outcome = await self.ingest.dispatch(forward, out, dedupable)
        if outcome.replayed:  # a copy: the original's reply, marked
            trailing.append((md.REPLAYED, "true"))
        if outcome.quota_remaining >= 0:
            trailing.append((md.QUOTA_REMAINING, str(outcome.quota_remaining)))
        context.set_trailing_metadata(trailing)
        return ingest_pb2.SubmitResponse(reply=outcome.reply, replayed=outcome.replayed)

    async def SubmitStream(self, request, context):
        """One message in, the reply in chunks; the last chunk is final and carries it all."""
        headers = _headers(context)
        forward, out, dedupable = self.ingest.admit(request.message, request.HasField("message"),
                                                    headers)
        # Tell the caller at once that the message was admitted, and under which id.
        await context.send_initial_metadata(((md.REQUEST_ID, out[md.REQUEST_ID]),))
        trailing = ((md.TRACE_ID, trace_id),) if (trace_id := current_trace_id()) else ()
        if trailing:
            context.set_trailing_metadata(trailing)
        async for chunk, replayed in self.ingest.stream(forward, out, dedupable):
            if replayed:
                context.set_trailing_metadata((*trailing, (md.REPLAYED, "true")))
            yield ingest_pb2.SubmitStreamResponse(chunk=chunk)

    async def Converse(self, request_iterator, context):
        """Answers each message as soon as its reply is ready (out of order).

        At most ``converse_max_in_flight`` messages of one stream are in
        flight; beyond that the stream stops reading (HTTP/2 flow control
        pushes back on the adapter). A failed message gets an error response;
        the stream goes on.
        """
        headers = _headers(context)
        done: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.converse_max_in_flight)
        tasks: set[asyncio.Task] = set()

        async def answer(req: ingest_pb2.ConverseRequest) -> None:
            cid = req.correlation_id or req.message.channel_message_id
            try:
                with message_span(CONVERSE):  # one trace per message, linked to the stream's
                    outcome = await self.ingest.submit(
                        req.message, req.HasField("message"), headers, method="Converse")
                done.put_nowait(ingest_pb2.ConverseResponse(
                    correlation_id=cid, reply=outcome.reply, replayed=outcome.replayed))
            except (ClawMeshError, grpc.aio.AioRpcError) as exc:
                status = status_of(exc)
                error = common_pb2.ErrorStatus(
                    code=status.code, message=status.message, details=status.details
                )
                done.put_nowait(ingest_pb2.ConverseResponse(correlation_id=cid, error=error))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(answer(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
            finally:  # also when the request stream fails: end the answers, re-raise below
                done.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await done.get()
                if item is None:
                    break
                yield item
            await reader  # re-raises a failure of the request stream
        finally:
            for task in (reader, *tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(reader, *tasks, return_exceptions=True)
