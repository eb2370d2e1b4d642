"""Request data, metadata and the four call shapes, on raw bytes.

    payload = Payload(cfg, method)        # data/metadata templates, parsed once
    msgs, md = payload.for_call(r, "g0c0")
    result = await do_call(channel_callable, shape, msgs, md, opts)

Messages are serialized once when the data has no template action (ghz caches those
too); responses are not decoded (ghz decodes them; the cost is not measured here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from clawmesh.loadtest.config import ConfigError
from clawmesh.loadtest.protodesc import message_class
from clawmesh.loadtest.report import Result
from clawmesh.loadtest.templates import Template, TemplateError, call_data

CODE_NAMES = {c: "".join(p.title() for p in c.name.split("_")) for c in grpc.StatusCode}
CODE_NAMES[grpc.StatusCode.CANCELLED] = "Canceled"
CODE_NAMES[grpc.StatusCode.OK] = "OK"


def error_text(code_name: str, details: str) -> str:
    return f"rpc error: code = {code_name} desc = {details}"


class Payload:
    """ghz's data and metadata providers for one method."""

    def __init__(self, cfg: dict, method: Any) -> None:
        self.method, self.cls = method, message_class(method.input_type)
        self.streaming_in = method.client_streaming
        self.count, self.dynamic_stream = cfg["stream-call-count"], cfg["stream-dynamic-messages"]
        templating = not cfg["disable-template-data"]
        funcs = not cfg["disable-template-functions"]
        self.binary: list[bytes] | None = None
        if cfg.get("binary-file"):
            self.binary = self._read_binary(cfg["binary-file"])
        data = cfg["data"]
        self.data_t = Template(json.dumps(data), funcs, "data") if templating else None
        self.static_data = (None if self.data_t and self.data_t.dynamic
                            else self._encode(data))
        if self.dynamic_stream and self.data_t and not self.data_t.dynamic:
            raise ConfigError("stream-dynamic-messages: default message provider cannot be "
                              "used with static data")
        meta = cfg["metadata"] or {}
        self.meta_t = Template(json.dumps(meta), funcs, "metadata") if templating else None
        self.static_meta = (None if self.meta_t and self.meta_t.dynamic
                            else self._metadata(meta))
        self.fields = set()
        for t in (self.data_t, self.meta_t):
            self.fields |= t.fields if t else set()

    def _read_binary(self, path: str) -> list[bytes]:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"binary-file: {exc}") from None
        return [raw]

    def _encode(self, data: Any) -> list[bytes]:
        if self.binary is not None:
            return self.binary
        items = data if isinstance(data, list) else [data]
        out = []
        for item in items:
            try:
                msg = json_format.ParseDict(item or {}, self.cls())
            except (json_format.ParseError, TypeError, ValueError) as exc:
                raise ConfigError(f"data: {self.method.input_type.full_name}: {exc}") from None
            out.append(msg.SerializeToString())
        return out

    @staticmethod
    def _metadata(meta: dict) -> tuple:
        out = []
        for key, value in meta.items():
            key = key.lower()
            if key.endswith("-bin"):
                value = base64.b64decode(value)
            out.append((key, value))
        return tuple(out)

    def _render(self, template: Template, ctx: dict) -> Any:
        text = template.render(ctx)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{template.name}: template output is not valid JSON "
                              f"({exc}): {text[:200]}") from None

    def context(self, r: int, worker_id: str) -> dict:
        return call_data(self.fields, r, worker_id, self.method)

    def for_call(self, r: int, worker_id: str) -> tuple[Iterator[bytes] | bytes, tuple]:
        """(one request, or an iterator of stream messages; metadata) for request ``r``."""
        dynamic = self.static_meta is None or self.static_data is None
        ctx = self.context(r, worker_id) if dynamic else {}
        meta = self.static_meta if self.static_meta is not None else \
            self._metadata(self._render(self.meta_t, ctx))
        data = self.static_data if self.static_data is not None else \
            self._encode(self._render(self.data_t, ctx))
        if not self.streaming_in:
            return data[r % len(data)], meta
        if self.dynamic_stream:
            return self._dynamic(r, worker_id), meta
        return self._cycle(data), meta

    def _cycle(self, data: list[bytes]) -> Iterator[bytes]:
        n = self.count or len(data)
        for i in range(n):
            yield data[i % len(data)]

    def _dynamic(self, r: int, worker_id: str) -> Iterator[bytes]:
        # ghz quirk (#461): object data with no stream-call-count sends nothing; array data
        # beyond its length repeats element 0.
        for i in range(self.count):
            data = self._encode(self._render(self.data_t, self.context(r, worker_id)))
            yield data[i] if i < len(data) else data[0]


class CallOpts:
    """Per-call settings taken from the config."""

    def __init__(self, cfg: dict) -> None:
        self.timeout = cfg["timeout"] / 1e9 or None
        self.interval = cfg["stream-interval"] / 1e9
        self.call_duration = cfg["stream-call-duration"] / 1e9
        self.count = cfg["stream-call-count"]
        self.compression = grpc.Compression.Gzip if cfg["enable-compression"] else None


async def do_call(multicallable: Any, shape: str, req: Any, meta: tuple,
                  opts: CallOpts) -> Result:
    """Make one call of any shape; a whole stream is one result."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter_ns()
    kwargs = {"timeout": opts.timeout, "metadata": meta or None}
    if opts.compression:
        kwargs["compression"] = opts.compression
    ours = False  # we cancelled a server stream (count / duration): ghz reports Canceled
    cut = False  # stream-call-duration elapsed: stop sending
    call = multicallable(req, **kwargs) if shape in ("unary", "server") else \
        multicallable(**kwargs)
    timer = None
    if opts.call_duration > 0:
        def on_timer() -> None:
            nonlocal ours, cut
            cut = True
            if shape == "server":
                ours = True
                call.cancel()
        timer = loop.call_later(opts.call_duration, on_timer)
    try:
        if shape == "unary":
            await call
        elif shape == "server":
            received = 0
            while (await call.read()) is not grpc.aio.EOF:
                received += 1
                if opts.count and received >= opts.count:
                    ours = True
                    call.cancel()
                    break
        else:
            reader = loop.create_task(_drain(call)) if shape == "bidi" else None
            first = True
            for msg in req:
                if not first and opts.interval > 0:
                    await asyncio.sleep(opts.interval)
                if cut:
                    break
                first = False
                await call.write(msg)
            await call.done_writing()
            if reader is not None:
                await reader
            else:
                await call
    except grpc.aio.AioRpcError:
        pass
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # we are being cancelled, not the call
            call.cancel()
            raise
    except asyncio.InvalidStateError:
        pass  # the server ended the call while we were still writing
    finally:
        if timer is not None:
            timer.cancel()
    if ours and shape == "server":
        code_name, details = "Canceled", "context canceled"
    else:
        code = await call.code()
        code_name, details = CODE_NAMES[code], await call.details()
    latency = time.perf_counter_ns() - start
    return Result(time.time_ns(), latency, code_name,
                  "" if code_name == "OK" else error_text(code_name, details))


async def _drain(call: Any) -> None:
    try:
        while (await call.read()) is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        pass


def shape_of(method: Any) -> str:
    return {(False, False): "unary", (False, True): "server", (True, False): "client",
            (True, True): "bidi"}[(method.client_streaming, method.server_streaming)]


__all__ = ["Payload", "CallOpts", "do_call", "shape_of", "CODE_NAMES", "TemplateError"]
