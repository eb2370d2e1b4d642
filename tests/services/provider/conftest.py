"""Fixtures shared by the provider tests."""

from __future__ import annotations

import pytest

from tests.openai_standin import OpenAIStandin


@pytest.fixture
async def api():
    """A real HTTP server speaking the OpenAI chat-completions API, scripted per test."""
    async with OpenAIStandin() as server:
        yield server
