"""Tools an agent route may call: a registry, and the built-in ones.

    tools = ToolRegistry.builtin()                 # current_time, search_history, calculator

    @tools.tool("weather", "Today's weather in a city",
                {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    async def weather(args: dict, ctx: ToolContext) -> str:
        return f"sunny in {args['city']}"

    results = await tools.run(calls, ctx, allowed={"calculator"}, timeout_s=5)

A tool gets its JSON arguments as a dict and returns text for the model. A tool's failure
(``ToolError``: bad arguments, nothing found ...), an unknown tool, arguments that are not
a JSON object and a timeout are answered to the model as ``error: ...`` and marked ``error``
in the record; the loop goes on, as a model can often recover. Built in:

- ``current_time``: now (the injected wall clock) in UTC or an IANA ``timezone``.
- ``search_history``: this session's messages holding every word of ``query`` (memory's
  ``Search``; a memory without it: the history routing fetched for the call).
- ``calculator``: ``+ - * / **``, unary minus and parentheses over numbers, parsed with
  ``ast`` and never evaluated as Python; exponents and results are bounded.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import json
import logging
import math
import operator
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from clawmesh.common.v1 import common_pb2

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8000  # what one tool answer may put into the conversation


class ToolError(Exception):
    """A tool could not do what was asked; its message goes back to the model."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may use: the message's session, memory (a MemoryClient) and the clock."""

    tenant: str
    session_id: str
    memory: Any = None
    history: Sequence[common_pb2.ChatMessage] = ()
    wall: Callable[[], float] = time.time


ToolFn = Callable[[dict, ToolContext], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    fn: ToolFn


@dataclass
class ToolResult:
    call: common_pb2.ToolCall
    content: str
    error: bool = False
    duration_ms: float = 0.0


@dataclass
class ToolRegistry:
    """Tools by name; the rules file's agents name which of them a model may call."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def register(self, tool: Tool) -> Tool:
        self.tools[tool.name] = tool
        return tool

    def tool(self, name: str, description: str, parameters: dict) -> Callable[[ToolFn], ToolFn]:
        """Decorator: register ``fn`` as tool ``name``."""

        def register(fn: ToolFn) -> ToolFn:
            self.register(Tool(name, description, parameters, fn))
            return fn

        return register

    def names(self) -> list[str]:
        return sorted(self.tools)

    def definitions(self, names: Collection[str]) -> list[common_pb2.ToolDefinition]:
        return [common_pb2.ToolDefinition(name=n, description=self.tools[n].description,
                                          parameters_json_schema=json.dumps(self.tools[n].parameters))
                for n in names]

    async def run(self, calls: Sequence[common_pb2.ToolCall], ctx: ToolContext, allowed: Collection[str],
                  timeout_s: float = 5.0) -> list[ToolResult]:
        """Run ``calls`` in order; every call gets a result (errors included)."""
        return [await self._run_one(call, ctx, allowed, timeout_s) for call in calls]

    async def _run_one(self, call: common_pb2.ToolCall, ctx: ToolContext, allowed: Collection[str],
                       timeout_s: float) -> ToolResult:
        started = time.perf_counter()
        try:
            tool = self.tools.get(call.name) if call.name in allowed else None
            if tool is None:
                raise ToolError(f"unknown tool {call.name!r}; available: {', '.join(sorted(allowed))}")
            try:
                args = json.loads(call.arguments_json or "{}")
            except ValueError:
                args = None
            if not isinstance(args, dict):
                raise ToolError("arguments must be a JSON object")
            try:
                async with asyncio.timeout(timeout_s):
                    content, error = await tool.fn(args, ctx), False
            except TimeoutError:
                raise ToolError(f"timed out after {timeout_s:g}s") from None
        except ToolError as exc:
            content, error = f"error: {exc}", True
        except Exception:  # noqa: BLE001 - a broken tool must not fail the message
            log.exception("tool failed", extra={"tool": call.name})
            content, error = "error: the tool failed", True
        return ToolResult(call, content[:MAX_RESULT_CHARS], error, (time.perf_counter() - started) * 1000.0)

    @classmethod
    def builtin(cls) -> ToolRegistry:
        """A registry with ``current_time``, ``search_history`` and ``calculator``."""
        registry = cls()
        registry.register(Tool("current_time", "The current date and time.", {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "IANA name, e.g. Europe/Paris; "
                                        "default UTC"}},
        }, current_time))
        registry.register(Tool("search_history", "Find earlier messages of this conversation that "
                               "contain every word of a query.", {
            "type": "object",
            "properties": {"query": {"type": "string"},
                           "limit": {"type": "integer", "minimum": 1, "maximum": 20}},
            "required": ["query"],
        }, search_history))
        registry.register(Tool("calculator", "Evaluate arithmetic: + - * / ** and parentheses.", {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (2 + 3) * 4 ** 2"}},
            "required": ["expression"],
        }, calculator))
        return registry


async def current_time(args: dict, ctx: ToolContext) -> str:
    name = args.get("timezone") or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown timezone {name!r}") from None
    now = dt.datetime.fromtimestamp(ctx.wall(), zone)
    return json.dumps({"time": now.isoformat(timespec="seconds"), "timezone": str(name),
                       "weekday": now.strftime("%A")})


async def search_history(args: dict, ctx: ToolContext) -> str:
    query = args.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ToolError("query must be a non-empty string")
    limit = args.get("limit", 5)
    if not isinstance(limit, int) or not 1 <= limit <= 20:
        raise ToolError("limit must be an integer from 1 to 20")
    found: list[tuple[int, common_pb2.ChatMessage]]
    try:
        response = await ctx.memory.search(ctx.session_id, query, limit)
        found = [(hit.sequence, hit.message) for hit in response.hits]
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise ToolError(f"memory: {exc.code().name}") from None
        words = query.lower().split()
        found = [(0, m) for m in reversed(ctx.history) if all(w in m.content.lower() for w in words)][:limit]
    roles = {common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant",
             common_pb2.ROLE_TOOL: "tool", common_pb2.ROLE_SYSTEM: "system"}
    return json.dumps([{"sequence": seq, "role": roles.get(m.role, "?"), "content": m.content[:500]}
                       for seq, m in found])


MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000
MAX_RESULT_BITS = 4096
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression; ToolError for anything else or too large."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError("not an arithmetic expression") from None
    return _value(tree.body)


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
        if isinstance(result, complex):
            raise ToolError("the result is not a real number")
        return _bounded(result)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("use ** for powers")
    raise ToolError("only numbers, + - * / **, unary minus and parentheses are allowed")


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent larger than {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if abs(base).bit_length() * exponent > MAX_RESULT_BITS:
            raise ToolError("result too large")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero")


def _bounded(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
        raise ToolError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result too large" if math.isinf(value) else "not a number")
    return value


def format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else format(value, ".15g")


async def calculator(args: dict, ctx: ToolContext) -> str:
    expression = args.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("expression must be a non-empty string")
    return format_number(calculate(expression))
