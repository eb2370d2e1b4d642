"""Context assembly (system prompt, history within the token budget) and the continuation overlap."""

import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2
from clawmesh.services.routing.failover import Overlap
from clawmesh.services.routing.prompt import assemble, tokens_of
from tests.openai_standin import Reply
from tests.services.routing.conftest import TENANT, openai, routing_mesh

USER, ASSISTANT, TOOL, SYSTEM = (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_TOOL,
                                 common_pb2.ROLE_SYSTEM)


def msg(role, text, **fields):
    return common_pb2.ChatMessage(role=role, content=text, **fields)


def test_history_fills_what_the_budget_leaves_newest_first():
    history = [msg(USER, "a" * 40), msg(ASSISTANT, "b" * 40), msg(USER, "c" * 40), msg(ASSISTANT, "d" * 40)]
    user = msg(USER, "e" * 40)  # 10 tokens each
    assert [m.content[0] for m in assemble(history, [user], "", 0)] == list("abcde")
    # 10 (system: 40 chars) + 10 (user) leave 20: the two newest fit
    out = assemble(history, [user], "s" * 40, 40)
    assert [(m.role, m.content[0]) for m in out] == [
        (SYSTEM, "s"), (USER, "c"), (ASSISTANT, "d"), (USER, "e")]
    # 25 left: three fit by size, but history would start with an assistant message: it is left out too
    assert [m.content[0] for m in assemble(history, [user], "", 45)] == list("cde")
    # the turn is always sent, even over the budget
    assert [m.content[0] for m in assemble(history, [user], "", 5)] == ["e"]
    assert tokens_of(msg(USER, "x", token_count=7)) == 7


def test_history_never_starts_with_a_tool_answer_whose_call_was_cut():
    calls = [common_pb2.ToolCall(id="1", name="calculator", arguments_json='{"expression": "1+1"}')]
    history = [msg(USER, "q"), msg(ASSISTANT, "", tool_calls=calls), msg(TOOL, "2", tool_call_id="1"),
               msg(ASSISTANT, "two"), msg(USER, "thanks"), msg(ASSISTANT, "welcome")]
    out = assemble(history[2:], [msg(USER, "next")])  # a window that cut the call off
    assert [m.content for m in out] == ["thanks", "welcome", "next"]


@pytest.mark.parametrize("sent, pieces, released", [
    ("alpha beta gamma", ["alpha ", "beta gamma", " delta"], " delta"),  # started over
    ("alpha beta gamma", [" beta gam", "ma delta"], " delta"),  # repeated its last words
    ("alpha beta gamma", [" delta", " epsilon"], " delta epsilon"),  # went on
    ("the answer is", [" the", " answer will come"], " the answer will come"),  # a coincidence, kept
    ("one two", [" two three"], " two three"),  # a repeat shorter than 8 characters is kept
    ("alpha beta gamma", ["alpha beta"], ""),  # only repeated: nothing new (flushed at the end)
])
def test_a_continuation_that_repeats_sent_text_is_trimmed(sent, pieces, released):
    overlap = Overlap(sent)
    out = "".join(overlap.feed(p) for p in pieces) + overlap.flush()
    assert out == released


async def test_a_route_sends_its_system_prompt_and_history_within_its_budget(settings, tmp_path, api_a):
    rules = """
routes:
  - name: tight
    primary: [{backend: a, token_budget: 40}]
    system_prompt: "You are terse."
"""
    async with routing_mesh(settings, tmp_path, rules, {"a": openai(api_a)}) as mesh:
        seed = [msg(USER, "old question " + "x" * 60), msg(ASSISTANT, "old answer " + "y" * 60),
                msg(USER, "recent question"), msg(ASSISTANT, "recent answer")]
        await mesh.memory.BatchAppend(memory_pb2.BatchAppendRequest(
            session_id="s1", idempotency_key="seed", messages=seed), metadata=TENANT, timeout=5)
        api_a.script(Reply("ok"))
        await mesh.dispatch("new question")
        sent = api_a.requests[0].body["messages"]
        assert sent == [{"role": "system", "content": "You are terse."},
                        {"role": "user", "content": "recent question"},
                        {"role": "assistant", "content": "recent answer"},
                        {"role": "user", "content": "new question"}]
