"""The agent loop through real servers: scripted tool calls (the mock's tool_script, the stand-in's
tool_calls), the tools run by routing, the record in the reply and in memory, max_iterations."""

import json

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.turn import STOPPED
from clawmesh.shared.settings import MockBackendConfig
from tests.fakes import FakeClock
from tests.openai_standin import Reply, Status
from tests.services.routing.conftest import openai, routing_mesh

RULES = """
routes:
  - name: helper
    primary: [{backend: model}]
    agent: helper
agents:
  helper: {tools: [calculator, current_time, search_history], max_iterations: 3}
"""
ROLES = {common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant", common_pb2.ROLE_TOOL: "tool"}


def mock(*rounds) -> MockBackendConfig:
    """A mock model whose first turns after a user message call these tools, then answer."""
    return MockBackendConfig(tool_script=[[{"name": name, "arguments": args} for name, args in calls]
                                          for calls in rounds])


async def test_a_scripted_tool_call_is_run_and_the_final_answer_uses_its_result(settings, tmp_path):
    backends = {"model": mock([("calculator", {"expression": "6 * 7"})])}
    async with routing_mesh(settings, tmp_path, RULES, backends) as mesh:
        response = await mesh.dispatch("what is six times seven?")
        assert 'you said "42"' in response.reply.content  # the mock answers the last message: the tool's
        run = response.agent
        assert (run.agent, run.status, run.iterations) == ("helper", routing_pb2.AGENT_STATUS_COMPLETED, 2)
        [invocation] = run.tool_calls
        assert (invocation.iteration, invocation.id, invocation.name) == (1, "call_0_0", "calculator")
        assert (invocation.result, invocation.error) == ("42", False)
        assert json.loads(invocation.arguments_json) == {"expression": "6 * 7"}
        stored = await mesh.history()
        assert [(ROLES[m.role], m.content) for m in stored] == [
            ("user", "what is six times seven?"), ("assistant", ""), ("tool", "42"),
            ("assistant", response.reply.content)]
        assert stored[1].tool_calls[0].name == "calculator" and stored[2].tool_call_id == "call_0_0"
        # The next message goes out with the stored tool exchange in its history.
        again = await mesh.dispatch("and again?")
        assert again.agent.status == routing_pb2.AGENT_STATUS_COMPLETED and len(await mesh.history()) == 8


async def test_tool_calls_from_an_openai_backend_are_answered_in_openai_format(settings, tmp_path, api_a):
    clock = FakeClock(0.0)
    async with routing_mesh(settings, tmp_path, RULES, {"model": openai(api_a)}, wall=clock) as mesh:
        api_a.script(
            Reply("", tool_calls=[{"id": "call_t", "name": "current_time",
                                   "arguments": json.dumps({"timezone": "Europe/Paris"})}]),
            Reply("It is one o'clock in Paris."),
        )
        responses = await mesh.stream("what time is it in Paris?")
        final = responses[-1]
        assert final.chunk.reply.content == "It is one o'clock in Paris."
        assert "".join(r.chunk.delta for r in responses[:-1]) == final.chunk.reply.content
        assert final.agent.status == routing_pb2.AGENT_STATUS_COMPLETED and final.agent.iterations == 2
        first, second = (r.body for r in api_a.requests)
        offered = {t["function"]["name"] for t in first["tools"]}
        assert offered == {"calculator", "current_time", "search_history"}
        call, answer = second["messages"][-2:]
        assert call["role"] == "assistant" and call["tool_calls"][0]["id"] == "call_t"
        assert (answer["role"], answer["tool_call_id"]) == ("tool", "call_t")
        assert json.loads(answer["content"])["time"] == "1970-01-01T01:00:00+01:00"  # the injected clock


async def test_search_history_finds_earlier_messages_of_the_session(settings, tmp_path, api_a):
    async with routing_mesh(settings, tmp_path, RULES, {"model": openai(api_a)}) as mesh:
        api_a.script(Reply("Noted."))
        await mesh.dispatch("my favourite tea is oolong")
        api_a.script(Reply("", tool_calls=[{"id": "s", "name": "search_history",
                                            "arguments": json.dumps({"query": "favourite tea"})}]),
                     Reply("Oolong."))
        response = await mesh.dispatch("which tea do I like?")
        found = json.loads(response.agent.tool_calls[0].result)
        assert found[0]["content"] == "my favourite tea is oolong" and found[0]["sequence"] == 1
        assert response.reply.content == "Oolong."


async def test_a_loop_that_never_finishes_stops_at_max_iterations_and_says_so(settings, tmp_path):
    forever = mock(*[[("calculator", {"expression": f"{i} + 1"}), ("shell", {"cmd": "ls"})]
                     for i in range(10)])
    async with routing_mesh(settings, tmp_path, RULES, {"model": forever}) as mesh:
        response = await mesh.dispatch("count forever")
        run = response.agent
        assert (run.status, run.iterations) == (routing_pb2.AGENT_STATUS_MAX_ITERATIONS, 3)
        assert [(c.iteration, c.name, c.result) for c in run.tool_calls] == [
            (1, "calculator", "1"), (1, "shell", "error: unknown tool 'shell'; available: calculator, "
                                                 "current_time, search_history"),
            (2, "calculator", "2"), (2, "shell", run.tool_calls[1].result)]
        assert response.reply.content == STOPPED.format(n=3)
        assert response.reply.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
        stored = await mesh.history()
        assert [ROLES[m.role] for m in stored] == ["user", "assistant", "tool", "tool", "assistant", "tool",
                                                   "tool", "assistant"]
        assert stored[-1].content == STOPPED.format(n=3) and not stored[-1].tool_calls

        responses = await mesh.stream("count forever", session="s2")  # streamed: the note is the last text
        assert responses[-2].chunk.delta == STOPPED.format(n=3)
        assert responses[-1].agent.status == routing_pb2.AGENT_STATUS_MAX_ITERATIONS


async def test_each_model_call_of_the_loop_fails_over_on_its_own(settings, tmp_path, api_a, api_b):
    rules = RULES.replace("primary: [{backend: model}]",
                          "primary: [{backend: a}]\n    fallbacks: [{backend: b}]")
    async with routing_mesh(settings, tmp_path, rules, {"a": openai(api_a), "b": openai(api_b)}) as mesh:
        calls = [{"id": "c", "name": "calculator", "arguments": '{"expression": "2**8"}'}]
        api_a.script(Reply("", tool_calls=calls), Status(500))
        api_b.script(Reply("256"))
        response = await mesh.dispatch("two to the eighth?")
        assert (response.reply.content, response.reply.backend) == ("256", "b")
        assert response.agent.tool_calls[0].result == "256"
        assert [(f.from_backend, f.to_backend) for f in response.failovers] == [("a", "b")]
        assert api_b.requests[0].body["messages"][-1] == {
            "role": "tool", "content": "256", "tool_call_id": "c", "name": "calculator"}
