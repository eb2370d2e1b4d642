"""One message's turn: what each target is sent, the agent loop's trail, and what is stored.

    turn = Turn(route, user, history, tools, ctx)
    while True:
        ... one model call along the route's chain, each target sent turn.request(target, partial) ...
        if not await turn.step(answer.content, answer.tool_calls):
            break
    await memory.append(session_id, turn.stored(), key)      # user, tool calls and answers, reply
    turn.content, turn.run                                     # the reply's text; the AgentRun record

Without an agent a turn is one model call. With one, each answer that asks for tools has them
run (``tools.ToolRegistry``) and is followed by another call with the calls and their results
in the conversation, until an answer asks for none. An answer that still asks for tools at the
agent's ``max_iterations`` ends the loop: its tools are not run, and the reply ends with
``STOPPED`` and the record says ``AGENT_STATUS_MAX_ITERATIONS`` (the call succeeds: what the
model said and what the tools found is kept, and the caller can tell it is not an answer).
"""

from __future__ import annotations

from collections.abc import Sequence

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.prompt import assemble, chat, continuation
from clawmesh.services.routing.rules import Route, Target
from clawmesh.services.routing.tools import ToolContext, ToolRegistry, ToolResult

STOPPED = "[stopped: the agent made {n} model calls, its limit, without reaching a final answer]"


class Turn:
    """The state of one message's answer across the model calls of an agent loop."""

    def __init__(self, route: Route, user: common_pb2.ChatMessage,
                 history: Sequence[common_pb2.ChatMessage], tools: ToolRegistry, ctx: ToolContext) -> None:
        self.route = route
        self.user = user
        self.history = list(history)
        self.tools = tools
        self.ctx = ctx
        self.trail: list[common_pb2.ChatMessage] = []  # tool calls and their answers
        self.texts: list[str] = []  # each model call's text
        self.note = ""  # STOPPED, when the loop stopped
        self.final: common_pb2.ChatMessage | None = None
        self.iteration = 0
        agent = route.agent
        self.definitions = tools.definitions(agent.tools) if agent else []
        self.run = routing_pb2.AgentRun(agent=route.agent_name) if agent else None

    @property
    def stopped(self) -> bool:
        return self.run is not None and self.run.status == routing_pb2.AGENT_STATUS_MAX_ITERATIONS

    @property
    def content(self) -> str:
        """The reply: every model call's text, in order (what a stream sent), and the note."""
        return "".join(self.texts) + self.note

    def request(self, target: Target, partial: str = "") -> dict:
        """The provider request's fields for ``target``; ``partial``: streamed text to continue."""
        messages = assemble(self.history, [self.user, *self.trail], target.system_prompt, target.token_budget)
        if partial:
            messages = continuation(messages, partial)
        return {"backend": target.backend, "model": target.model, "messages": messages,
                "tools": self.definitions, "session_id": self.ctx.session_id}

    async def step(self, content: str, calls: Sequence[common_pb2.ToolCall]) -> bool:
        """Record one model answer and run the tools it asks for; False when the turn is over."""
        self.iteration += 1
        self.texts.append(content)
        agent = self.route.agent
        if agent is None or not calls:
            self.final = chat(common_pb2.ROLE_ASSISTANT, content)
            if self.run is not None:
                self.run.status, self.run.iterations = routing_pb2.AGENT_STATUS_COMPLETED, self.iteration
            return False
        self.run.iterations = self.iteration
        if self.iteration >= agent.max_iterations:
            self.run.status = routing_pb2.AGENT_STATUS_MAX_ITERATIONS
            self.note = ("\n\n" if self.content else "") + STOPPED.format(n=self.iteration)
            self.final = chat(common_pb2.ROLE_ASSISTANT, (content + "\n\n" if content else "")
                              + STOPPED.format(n=self.iteration))
            return False
        run, extra = list(calls[: agent.max_tool_calls]), list(calls[agent.max_tool_calls:])
        results = await self.tools.run(run, self.ctx, agent.tools, agent.tool_timeout_s)
        results += [ToolResult(c, f"error: at most {agent.max_tool_calls} tool calls per step", True)
                    for c in extra]
        self.trail.append(chat(common_pb2.ROLE_ASSISTANT, content, tool_calls=calls))
        for result in results:
            call = result.call
            self.trail.append(chat(common_pb2.ROLE_TOOL, result.content, name=call.name,
                                   tool_call_id=call.id))
            self.run.tool_calls.append(routing_pb2.ToolInvocation(
                iteration=self.iteration, id=call.id, name=call.name, arguments_json=call.arguments_json,
                result=result.content, error=result.error, duration_ms=result.duration_ms))
        return True

    def stored(self) -> list[common_pb2.ChatMessage]:
        """What memory keeps of the turn, in order."""
        return [self.user, *self.trail, self.final]
