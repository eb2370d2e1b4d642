"""LLM backends behind one interface, built from settings.

    backends = build_backends(settings.provider)          # {"mock": MockBackend, ...}
    gen = await backends["mock"].generate([Turn("user", "hi")], model="", max_tokens=0)
    stream = backends["mock"].stream([Turn("user", "hi")], "", 0)
    text = "".join([delta async for delta in stream])    # stream.result: the Generation

Kinds: ``mock`` (embedded, deterministic, with injected faults) and ``openai`` (any
OpenAI-compatible chat-completions server). Failures are ``BackendError``s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from clawmesh.services.provider.backends.base import (
    NO_LIMITS,
    Backend,
    BackendInfo,
    BackendStats,
    BaseBackend,
    Generation,
    Limits,
    TextStream,
    ToolCall,
    ToolSpec,
    Turn,
)
from clawmesh.services.provider.backends.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    FirstTokenTimeout,
    MalformedResponse,
    RateLimited,
    StallTimeout,
    TotalTimeout,
    parse_retry_after,
)
from clawmesh.services.provider.backends.mock import MockBackend
from clawmesh.services.provider.backends.openai_compat import OpenAIBackend
from clawmesh.shared.settings import MockBackendConfig, ProviderSettings

__all__ = [
    "NO_LIMITS", "Backend", "BackendError", "BackendInfo", "BackendStats", "BackendTimeout",
    "BackendUnavailable", "BadRequest", "BaseBackend", "FirstTokenTimeout", "Generation", "Limits",
    "MalformedResponse", "MockBackend", "OpenAIBackend", "RateLimited", "StallTimeout", "TextStream",
    "ToolCall", "ToolSpec", "TotalTimeout", "Turn", "build_backends", "parse_retry_after",
]


def build_backends(cfg: ProviderSettings, env: Mapping[str, str] = os.environ) -> dict[str, Backend]:
    """One backend per configured entry; API keys come from ``env`` (SettingsError if missing)."""
    return {
        name: MockBackend.from_config(name, c) if isinstance(c, MockBackendConfig)
        else OpenAIBackend.from_config(name, c, env)
        for name, c in cfg.backend_configs().items()
    }
