"""Provider core: picks the backend for a request and runs it, guarded. No gRPC types.

    provider = Provider.from_settings(settings.provider)       # breaker + retries per backend
    info, gen = await provider.generate("", "", [Turn("user", "hi")], 0)
    backend, stream = provider.stream("mock", "", [Turn("user", "hi")], 0)

    provider = Provider({"mock": GuardedBackend(MockBackend())}, default="mock")   # by hand

Every backend call goes through its ``GuardedBackend`` (``resilience.py``): refused at
once while the backend's breaker is open, retried within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Mapping, Sequence

from clawmesh.services.provider.backends import (
    BackendInfo,
    Generation,
    TextStream,
    ToolSpec,
    Turn,
    build_backends,
)
from clawmesh.services.provider.resilience import GuardedBackend, RetryPolicy, Sleep, backend_breaker
from clawmesh.shared.breaker import MONOTONIC, Clock
from clawmesh.shared.errors import InvalidArgument
from clawmesh.shared.settings import ProviderSettings


class Provider:
    """Named, guarded backends with a default."""

    def __init__(self, backends: dict[str, GuardedBackend], default: str) -> None:
        if default not in backends:
            raise ValueError(f"default backend {default!r} is not configured")
        self.backends = backends
        self.default = default

    @classmethod
    def from_settings(cls, cfg: ProviderSettings, env: Mapping[str, str] = os.environ, *,
                      clock: Clock = MONOTONIC, rng: random.Random | None = None,
                      sleep: Sleep = asyncio.sleep) -> Provider:
        """Each configured backend behind its breaker (``breaker:``) and retries (``retry:``).

        ``clock`` (the breakers'), ``rng`` (retry jitter) and ``sleep`` are for tests."""
        configs = cfg.backend_configs()
        guarded = {
            name: GuardedBackend(backend, backend_breaker(name, configs[name].breaker.config(), clock),
                                 RetryPolicy.from_config(configs[name].retry), rng=rng, sleep=sleep)
            for name, backend in build_backends(cfg, env).items()
        }
        return cls(guarded, default=cfg.default_backend)

    def backend(self, name: str) -> GuardedBackend:
        backend = self.backends.get(name or self.default)
        if backend is None:
            raise InvalidArgument(
                "backend", f"unknown backend {name!r}; configured: {', '.join(self.backends)}"
            )
        return backend

    @staticmethod
    def _check(turns: list[Turn]) -> None:
        if not turns:
            raise InvalidArgument("messages", "must contain at least one message")

    async def generate(self, backend: str, model: str, turns: list[Turn], max_tokens: int,
                       tools: Sequence[ToolSpec] = ()) -> tuple[BackendInfo, Generation]:
        self._check(turns)
        chosen = self.backend(backend)
        return chosen.info, await chosen.generate(turns, model, max_tokens, tools)

    def stream(self, backend: str, model: str, turns: list[Turn], max_tokens: int,
               tools: Sequence[ToolSpec] = ()) -> tuple[GuardedBackend, TextStream]:
        self._check(turns)
        chosen = self.backend(backend)
        return chosen, chosen.stream(turns, model, max_tokens, tools)

    def list(self) -> list[tuple[GuardedBackend, bool]]:
        """Every backend (its ``info``, ``limits`` and ``breaker``), and whether it is the default."""
        return [(b, name == self.default) for name, b in self.backends.items()]

    async def aclose(self) -> None:
        """Close every backend's connections (at server stop)."""
        for backend in self.backends.values():
            await backend.aclose()
