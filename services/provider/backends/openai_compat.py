"""An OpenAI-compatible chat-completions backend over HTTP: OpenAI, DeepSeek, vLLM, Ollama, llama.cpp.

    backend = OpenAIBackend("local", "http://127.0.0.1:11434/v1", "llama3.2",
                            limits=Limits(max_concurrency=8, first_token_s=30, stall_s=10))
    gen = await backend.generate([Turn("user", "hi")], model="", max_tokens=256)
    async for delta in backend.stream([Turn("user", "hi")], "", 0):
        ...
    await backend.aclose()

``POST {base_url}/chat/completions``, plain JSON or SSE (``stream: true`` with
``stream_options.include_usage``), with the configured ``temperature`` when one is set.
One pooled ``httpx.AsyncClient`` per backend.
Timeouts: connect (httpx), then first token, stall between chunks and total (the
base class, around the SSE iteration); leaving a stream early closes its HTTP request.
HTTP failures become the backends' exceptions: 429 ``RateLimited`` (Retry-After
honoured), 5xx / connection errors / 401 / 403 / 408 ``BackendUnavailable``, other
4xx ``BadRequest``, unparsable bodies ``MalformedResponse``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from clawmesh.services.provider.backends.base import (
    NO_LIMITS,
    BaseBackend,
    Generation,
    Limits,
    ToolCall,
    ToolSpec,
    Turn,
)
from clawmesh.services.provider.backends.errors import (
    BackendUnavailable,
    BadRequest,
    MalformedResponse,
    RateLimited,
    parse_retry_after,
)
from clawmesh.shared.settings import OpenAIBackendConfig, SettingsError
from clawmesh.shared.tokens import estimate_tokens

PATH = "chat/completions"
FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
          "content_filter": "content_filter"}
# Statuses that are the backend's (or our credentials') fault, not the request's.
UNAVAILABLE_4XX = {401, 403, 408}


class OpenAIBackend(BaseBackend):
    """Chat completions on ``base_url``; ``model`` when a request names none."""

    kind = "openai"

    def __init__(self, name: str, base_url: str, model: str, *, models: list[str] | None = None,
                 api_key: str | None = None, headers: Mapping[str, str] | None = None,
                 connect_timeout_s: float = 5.0, limits: Limits = NO_LIMITS,
                 temperature: float | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(name, [model, *(m for m in models or () if m != model)], limits, temperature)
        self.model = model
        sent = dict(headers or {})
        if api_key:
            sent["Authorization"] = f"Bearer {api_key}"
        pool = limits.max_concurrency or 100
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=sent,
            # Only connect is httpx's: reads are bounded per phase by the base class.
            timeout=httpx.Timeout(None, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
        )

    @classmethod
    def from_config(cls, name: str, cfg: OpenAIBackendConfig, env: Mapping[str, str]) -> OpenAIBackend:
        """Raises SettingsError naming the variable when ``api_key_env`` is not set."""
        api_key = None
        if cfg.api_key_env:
            api_key = env.get(cfg.api_key_env)
            if not api_key:
                raise SettingsError(f"provider.backends.{name}.api_key_env: environment variable "
                                    f"{cfg.api_key_env} is not set (it holds the API key)")
        return cls(
            name, cfg.base_url, cfg.model, models=cfg.models, api_key=api_key, headers=cfg.headers,
            connect_timeout_s=cfg.connect_timeout_s,
            limits=Limits(cfg.max_concurrency, cfg.first_token_timeout_s, cfg.stall_timeout_s,
                          cfg.total_timeout_s),
            temperature=cfg.temperature,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _body(self, turns: list[Turn], model: str, max_tokens: int, tools: tuple[ToolSpec, ...],
              stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model or self.model, "messages": [_message(t) for t in turns]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        if self.info.temperature is not None:
            body["temperature"] = self.info.temperature
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}} for t in tools]
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def _generate(self, turns: list[Turn], model: str, max_tokens: int,
                        tools: tuple[ToolSpec, ...]) -> Generation:
        body = self._body(turns, model, max_tokens, tools, stream=False)
        try:
            response = await self.client.post(PATH, json=body)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        self._check(response, response.content)
        try:
            data = json.loads(response.content)
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            if not isinstance(content, str):
                raise TypeError("content is not text")
            calls = [_tool_call(c) for c in choice["message"].get("tool_calls") or ()]
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"{self.info.name}: not a chat completion: {exc!r}") from None
        finish, usage = choice.get("finish_reason"), data.get("usage")
        return _generation(body["model"], turns, content, calls, finish, usage)

    async def _stream(self, turns: list[Turn], model: str, max_tokens: int,
                      tools: tuple[ToolSpec, ...]) -> AsyncIterator[str | Generation]:
        body = self._body(turns, model, max_tokens, tools, stream=True)
        try:
            async with self.client.stream("POST", PATH, json=body) as response:
                if not response.is_success:
                    self._check(response, await response.aread())
                async for item in self._events(response, body["model"], turns):
                    yield item
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc

    async def _events(self, response: httpx.Response, model: str,
                      turns: list[Turn]) -> AsyncIterator[str | Generation]:
        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage: dict | None = None
        async for data in _sse_data(response):
            if data == "[DONE]":
                break
            event = self._event(data)
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():  # n=1: one choice
                delta = choice.get("delta") or {}
                progress = bool(delta.get("reasoning_content"))
                for fragment in delta.get("tool_calls") or ():
                    _merge_call(calls, fragment)
                    progress = True
                finish = choice.get("finish_reason") or finish
                if delta.get("content"):
                    parts.append(delta["content"])
                    yield delta["content"]
                elif progress:
                    yield ""
        else:
            if finish is None:
                raise BackendUnavailable(f"{self.info.name}: stream ended without [DONE] or a finish reason")
        try:
            tool_calls = [ToolCall(c["id"], c["name"], c["arguments"] or "{}") for c in calls.values()]
        except KeyError as exc:
            raise MalformedResponse(f"{self.info.name}: tool call without {exc}") from None
        yield _generation(model, turns, "".join(parts), tool_calls, finish, usage)

    def _event(self, data: str) -> dict:
        """One SSE data payload, checked to be a chunk (an error event: the backend failed)."""
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("error"):
            raise BackendUnavailable(f"{self.info.name}: error in stream: {_error_text(event)}")
        if not _is_chunk(event):
            raise MalformedResponse(f"{self.info.name}: malformed chunk {data[:200]!r}")
        return event

    def _check(self, response: httpx.Response, body: bytes) -> None:
        if response.is_success:
            return
        status, error = response.status_code, _json_or_text(body)
        what = f"{self.info.name}: HTTP {status}: {_error_text(error)}"
        retry = _retry_after(response.headers)
        if status == 429:
            raise RateLimited(what, retry)
        if 400 <= status < 500 and status not in UNAVAILABLE_4XX:
            param = error["error"].get("param") if isinstance(error.get("error"), dict) else None
            raise BadRequest(what, field=param if isinstance(param, str) else "")
        raise BackendUnavailable(what, retry)

    def _unavailable(self, exc: httpx.HTTPError) -> BackendUnavailable:
        return BackendUnavailable(f"{self.info.name}: {type(exc).__name__}: {exc}".rstrip(": "))


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each server-sent event (multi-line data joined by newlines)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def _is_chunk(event: Any) -> bool:
    """A chat.completion.chunk: choices with dict deltas, text content, dict tool-call fragments."""
    if not isinstance(event, dict) or not isinstance(event.get("choices") or [], list):
        return False
    for choice in event.get("choices") or ():
        delta = (choice.get("delta") or {}) if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or not isinstance(delta.get("content") or "", str):
            return False
        fragments = delta.get("tool_calls") or []
        if not isinstance(fragments, list) or not all(isinstance(f, dict) for f in fragments):
            return False
    return True


def _message(turn: Turn) -> dict[str, Any]:
    out: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.name:
        out["name"] = turn.name
    if turn.tool_calls:
        out["tool_calls"] = [c.to_openai() for c in turn.tool_calls]
        out["content"] = turn.content or None
    if turn.tool_call_id:
        out["tool_call_id"] = turn.tool_call_id
    return out


def _tool_call(raw: dict) -> ToolCall:
    return ToolCall(raw["id"], raw["function"]["name"], raw["function"].get("arguments") or "{}")


def _merge_call(calls: dict[int, dict[str, str]], fragment: dict) -> None:
    """Streamed tool calls come in pieces keyed by index: id and name once, arguments in parts."""
    call = calls.setdefault(fragment.get("index", len(calls)), {"arguments": ""})
    function = fragment.get("function") or {}
    for key, value in (("id", fragment.get("id")), ("name", function.get("name"))):
        if value:
            call[key] = value
    call["arguments"] += function.get("arguments") or ""


def _generation(model: str, turns: list[Turn], content: str, calls: list[ToolCall],
                finish: str | None, usage: dict | None) -> Generation:
    usage = usage if isinstance(usage, dict) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int):
        prompt = sum(estimate_tokens(t.content) for t in turns)
    if not isinstance(completion, int):
        completion = estimate_tokens(content) + sum(estimate_tokens(c.arguments) for c in calls)
    reason = FINISH.get(finish or "", "tool_calls" if calls else "stop")
    return Generation(content=content, model=model, prompt_tokens=prompt, completion_tokens=completion,
                      finish_reason=reason, tool_calls=calls)


def _retry_after(headers: httpx.Headers) -> float | None:
    """``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or an HTTP-date)."""
    ms = parse_retry_after(headers.get("retry-after-ms"))
    return ms / 1000.0 if ms is not None else parse_retry_after(headers.get("retry-after"))


def _json_or_text(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"error": body.decode("utf-8", "replace")}


def _error_text(data: dict) -> str:
    error = data.get("error", data)
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return str(error).strip()[:500] or "(no message)"
