"""Agent tools: the calculator never evaluates Python, the clock is injected, failures are answers."""

import asyncio
import json

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.services.routing.tools import ToolContext, ToolError, ToolRegistry, calculate, format_number
from tests.fakes import FakeClock


@pytest.mark.parametrize("expression, value", [
    ("(2 + 3) * 4 ** 2", "80"),
    ("7 / 2", "3.5"),
    ("-3 ** 2", "-9"),
    ("2 ** -2", "0.25"),
    ("10 - 2 - 3", "5"),
    ("2 ** 0.5", "1.4142135623731"),
    ("1.5e3 + 1", "1501"),
    ("2 ** 100", "1267650600228229401496703205376"),
])
def test_calculator_computes_arithmetic(expression, value):
    assert format_number(calculate(expression)).startswith(value)


@pytest.mark.parametrize("expression, problem", [
    ("__import__('os').system('true')", "only numbers"),
    ("(1).__class__", "only numbers"),
    ("x + 1", "only numbers"),
    ("True + 1", "only numbers"),
    ("[1, 2]", "only numbers"),
    ("1 if 1 else 2", "only numbers"),
    ("2 ^ 3", "use ** for powers"),
    ("1 / 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("2 ** 10001", "exponent larger than 1000"),
    ("9 ** 999 ** 999", "result too large"),
    ("10 ** 999 * 10 ** 999 * 10 ** 999 * 10 ** 999 * 10 ** 999", "result too large"),
    ("1e308 * 10", "result too large"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 201, "longer than 200"),
])
def test_calculator_refuses_everything_else(expression, problem):
    with pytest.raises(ToolError) as err:
        calculate(expression)
    assert problem in str(err.value)


def call(name: str, arguments, id_: str = "c1") -> common_pb2.ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return common_pb2.ToolCall(id=id_, name=name, arguments_json=text)


async def test_current_time_reads_the_injected_clock():
    tools = ToolRegistry.builtin()
    ctx = ToolContext("t", "s", wall=FakeClock(0.0))
    calls = [call("current_time", {}), call("current_time", {"timezone": "Europe/Paris"}),
             call("current_time", {"timezone": "Mars/Olympus"})]
    [utc, paris, bad] = await tools.run(calls, ctx, tools.names())
    assert json.loads(utc.content) == {"time": "1970-01-01T00:00:00+00:00", "timezone": "UTC",
                                       "weekday": "Thursday"}
    assert json.loads(paris.content)["time"] == "1970-01-01T01:00:00+01:00"
    assert bad.error and bad.content == "error: unknown timezone 'Mars/Olympus'"


async def test_failures_are_answers_to_the_model_and_the_registry_takes_more_tools():
    tools = ToolRegistry.builtin()

    @tools.tool("slow", "Never answers in time.", {"type": "object"})
    async def slow(args, ctx):
        await asyncio.sleep(10)

    @tools.tool("broken", "Raises.", {"type": "object"})
    async def broken(args, ctx):
        raise RuntimeError("bug")

    @tools.tool("echo", "Says it back.", {"type": "object", "properties": {"text": {"type": "string"}}})
    async def echo(args, ctx):
        return f"{ctx.session_id}: {args['text']}"

    allowed = {"calculator", "slow", "broken", "echo"}
    results = await tools.run([
        call("echo", {"text": "hi"}), call("shell", {"cmd": "rm"}), call("calculator", "not json"),
        call("calculator", [1]), call("slow", {}), call("broken", {}), call("current_time", {}),
        call("calculator", {"expression": "6*7"}),
    ], ToolContext("t", "s1"), allowed, timeout_s=0.05)
    assert [(r.content, r.error) for r in results] == [
        ("s1: hi", False),
        ("error: unknown tool 'shell'; available: broken, calculator, echo, slow", True),
        ("error: arguments must be a JSON object", True),
        ("error: arguments must be a JSON object", True),
        ("error: timed out after 0.05s", True),
        ("error: the tool failed", True),
        # Registered, but not one of the agent's tools:
        ("error: unknown tool 'current_time'; available: broken, calculator, echo, slow", True),
        ("42", False),
    ]
    definitions = {d.name: json.loads(d.parameters_json_schema)
                   for d in tools.definitions(["echo", "calculator"])}
    assert definitions["calculator"]["required"] == ["expression"] and "echo" in definitions


class Memory:
    """A memory client whose Search is not implemented (an older memory service)."""

    async def search(self, session_id, query, limit):
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata())


async def test_search_history_scans_the_fetched_history_when_memory_cannot_search():
    history = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="My favourite tea is oolong"),
               common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content="Noted: oolong tea.")]
    tools = ToolRegistry.builtin()
    [found, empty] = await tools.run([call("search_history", {"query": "favourite TEA"}),
                                      call("search_history", {"query": ""})],
                                     ToolContext("t", "s", Memory(), history), tools.names())
    assert json.loads(found.content) == [
        {"sequence": 0, "role": "user", "content": "My favourite tea is oolong"}]
    assert empty.error and "query" in empty.content
