"""Context assembly: what one model call is sent — system prompt, history within a token budget, the turn.

    messages = assemble(history, [user], system_prompt="Be brief.", token_budget=4000)
    messages = continuation(messages, partial="The capital of France is")   # after a mid-stream failure

Tokens are ``ChatMessage.token_count`` when set, else ``shared.tokens.estimate_tokens``. The
system prompt and the turn (the user's message, then an agent's tool calls and answers) are
always sent; history fills what is left of the budget, newest first. History never starts in
the middle of an exchange: leading assistant and tool messages whose user message did not fit
are left out too (a backend rejects a tool answer without its call).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from clawmesh.common.v1 import common_pb2
from clawmesh.shared.tokens import estimate_tokens

CONTINUE = ("Your previous reply was cut off after the text above. Continue it from exactly where it "
            "stopped, without repeating any of it.")


def tokens_of(message: common_pb2.ChatMessage) -> int:
    calls = sum(estimate_tokens(c.name) + estimate_tokens(c.arguments_json) for c in message.tool_calls)
    return (message.token_count or estimate_tokens(message.content)) + calls


def chat(role: int, content: str, **fields) -> common_pb2.ChatMessage:
    """A message stamped now."""
    message = common_pb2.ChatMessage(role=role, content=content, **fields)
    message.created_time.FromNanoseconds(time.time_ns())
    return message


def assemble(history: Sequence[common_pb2.ChatMessage], turn: Sequence[common_pb2.ChatMessage],
             system_prompt: str = "", token_budget: int = 0) -> list[common_pb2.ChatMessage]:
    """[system] + the newest history that fits ``token_budget`` (0: all of it) + ``turn``."""
    head = []
    if system_prompt:
        head.append(common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=system_prompt))
    kept = list(history)
    if token_budget:
        room = token_budget - sum(tokens_of(m) for m in (*head, *turn))
        start = len(kept)
        while start > 0 and tokens_of(kept[start - 1]) <= room:
            start -= 1
            room -= tokens_of(kept[start])
        kept = kept[start:]
    first_user = next((i for i, m in enumerate(kept) if m.role == common_pb2.ROLE_USER), len(kept))
    return [*head, *kept[first_user:], *turn]


def continuation(messages: Sequence[common_pb2.ChatMessage], partial: str) -> list[common_pb2.ChatMessage]:
    """``messages`` with the streamed ``partial`` answer as an assistant prefix and the instruction to
    continue it (for the next target after a mid-stream failure)."""
    return [*messages, common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=partial),
            common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=CONTINUE)]
