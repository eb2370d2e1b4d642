"""A real HTTP/1.1 server standing in for an OpenAI-compatible chat-completions API.

    async with OpenAIStandin() as api:
        api.script(Reply("hi there", chunk_delay_s=0.05), Status(429, headers={"Retry-After": "2"}))
        backend = OpenAIBackend("t", api.url, "gpt-test")
        ...                                  # request 1 gets the reply, request 2 the 429
        api.requests[0].body["messages"]     # what the client sent
        await api.requests[1].disconnected.wait()

Each request takes the next scripted response (a ``Reply`` or a ``Status``); with the
script empty it gets ``Reply()``. A ``Reply`` is plain JSON, or SSE when the request
asked for ``stream: true``. Every request is recorded with its headers and body, and
with events for "response finished" and "client went away before the end".
Asyncio streams only: no dependency beyond the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MALFORMED = b'data: {"choices": [{"index": 0, "delta": {"content": "trunc\n\n'


@dataclass
class Reply:
    """A completion. Delays are in seconds; ``*_after`` count content chunks already sent."""

    content: str = "hello from the stand-in"
    chunks: list[str] | None = None  # stream pieces; default: content word by word
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "arguments"}
    usage: tuple[int, int] | None = (11, 7)  # (prompt, completion); None: send no usage
    finish_reason: str | None = None  # default: "tool_calls" with tool calls, else "stop"
    delay_s: float = 0.0  # before the response headers
    first_chunk_delay_s: float = 0.0  # after the headers, before the first content chunk
    chunk_delay_s: float = 0.0  # between content chunks
    stall_after: int | None = None  # stop for stall_s after this many content chunks
    stall_s: float = 0.0
    malformed_after: int | None = None  # send a chunk that is not JSON after this many
    done: bool = True  # end the stream with data: [DONE]

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        words = self.content.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)] if self.content else []

    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


@dataclass
class Status:
    """A non-2xx answer (429, 500 ...) with an OpenAI-style error body unless given."""

    code: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON (or the raw text)
    connection: int = 0  # which TCP connection carried it (pooling)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


class Disconnected(Exception):
    """The client closed the connection before the response ended."""


class OpenAIStandin:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) while in ``async with``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: deque[Reply | Status] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.connections = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *responses: Reply | Status) -> None:
        """Queue the responses of the next requests, in order."""
        self._script.extend(responses)

    async def __aenter__(self) -> OpenAIStandin:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        connection = self.connections
        try:
            while (request := await _read_request(reader)) is not None:
                request.connection = connection
                self.requests.append(request)
                try:
                    await self._respond(request, reader, writer)
                except (Disconnected, ConnectionError):
                    request.disconnected.set()
                    return
                request.finished.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, request: Recorded, reader, writer) -> None:
        if (request.method, request.path) != ("POST", "/v1/chat/completions"):
            return await _send(writer, 404, {"error": {"message": f"no route {request.path}"}})
        answer = self._script.popleft() if self._script else Reply()
        await _pause(reader, answer.delay_s)
        if isinstance(answer, Status):
            body = answer.body if answer.body is not None else {
                "error": {"message": f"stand-in says {answer.code}", "type": "test"}}
            return await _send(writer, answer.code, body, answer.headers)
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await _stream(reader, writer, answer, body.get("model", ""), include_usage)
        return await _send(writer, 200, _completion(answer, body.get("model", "")))


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return Recorded(method, path, headers, body)


async def _pause(reader: asyncio.StreamReader, seconds: float) -> None:
    """Wait, noticing at once when the client closes the connection meanwhile."""
    if seconds <= 0:
        return
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return
    if not data:
        raise Disconnected


async def _send(writer, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
    payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(payload)), **(headers or {})}
    writer.write(_head(code, head) + payload)
    await writer.drain()


def _head(code: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in reply.tool_calls
        ]
    out: dict[str, Any] = {
        "id": "chatcmpl-standin", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish()}],
    }
    if reply.usage is not None:
        out["usage"] = _usage(reply)
    return out


async def _stream(reader, writer, reply: Reply, model: str, include_usage: bool) -> None:
    writer.write(_head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}))

    async def event(data: Any) -> None:
        raw = data if isinstance(data, bytes) else b"data: " + json.dumps(data).encode() + b"\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        await writer.drain()

    def chunk(delta: dict, finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    await event(chunk({"role": "assistant", "content": ""}))
    await _pause(reader, reply.first_chunk_delay_s)
    pieces = reply.pieces()
    for i in range(len(pieces) + 1):
        if i == reply.stall_after:
            await _pause(reader, reply.stall_s)
        if i == reply.malformed_after:
            await event(MALFORMED)
        if i == len(pieces):
            break
        if i:
            await _pause(reader, reply.chunk_delay_s)
        await event(chunk({"content": pieces[i]}))
    for index, call in enumerate(reply.tool_calls):
        half = len(call["arguments"]) // 2
        head, tail = call["arguments"][:half], call["arguments"][half:]
        await event(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": call["name"], "arguments": head}}]}))
        await event(chunk({"tool_calls": [{"index": index, "function": {"arguments": tail}}]}))
    await event(chunk({}, reply.finish()))
    if include_usage and reply.usage is not None:
        await event({"id": "chatcmpl-standin", "object": "chat.completion.chunk", "model": model,
                     "choices": [], "usage": _usage(reply)})
    if reply.done:
        await event(b"data: [DONE]\n\n")
    writer.write(b"0\r\n\r\n")
    await writer.drain()
