"""Provider core: picks the backend for a request and runs it, guarded. No gRPC types.

    provider = Provider.from_settings(settings.provider)       # breaker + retries per backend
    info, gen = await provider.generate("", "", [Turn("user", "hi")], 0)
    backend, stream = provider.stream("mock", "", [Turn("user", "hi")], 0)

    provider = Provider({"mock": GuardedBackend(MockBackend(temperature=0))}, default="mock",
                        cache=ResponseCache())                  # by hand
    info, gen = await provider.generate("", "", turns, 0, cache=CacheOptions(session_id="s1"))
    gen.cached                                # True the second time: from the response cache

Every backend call goes through its ``GuardedBackend`` (``resilience.py``): refused at
once while the backend's breaker is open, retried within the caller's deadline. With a
``ResponseCache`` (``cache.py``; ``cache:`` in the settings), a cacheable request is answered
from it when it can be, and a backend's reply is kept there (a stream's once it completed).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence

from clawmesh.services.provider.backends import (
    BackendInfo,
    Generation,
    TextStream,
    ToolSpec,
    Turn,
    build_backends,
)
from clawmesh.services.provider.cache import CacheOptions, Lookup, ResponseCache
from clawmesh.services.provider.resilience import GuardedBackend, RetryPolicy, Sleep, backend_breaker
from clawmesh.shared.breaker import MONOTONIC, Clock
from clawmesh.shared.errors import InvalidArgument
from clawmesh.shared.settings import ProviderSettings


class Provider:
    """Named, guarded backends with a default, and the response cache (None: off)."""

    def __init__(self, backends: dict[str, GuardedBackend], default: str,
                 cache: ResponseCache | None = None) -> None:
        if default not in backends:
            raise ValueError(f"default backend {default!r} is not configured")
        self.backends = backends
        self.default = default
        self.cache = cache

    @classmethod
    def from_settings(cls, cfg: ProviderSettings, env: Mapping[str, str] = os.environ, *,
                      clock: Clock = MONOTONIC, rng: random.Random | None = None,
                      sleep: Sleep = asyncio.sleep) -> Provider:
        """Each configured backend behind its breaker (``breaker:``) and retries (``retry:``),
        and the response cache (``cache:``).

        ``clock`` (the breakers' and the cache's), ``rng`` (retry jitter) and ``sleep`` are for tests."""
        configs = cfg.backend_configs()
        guarded = {
            name: GuardedBackend(backend, backend_breaker(name, configs[name].breaker.config(), clock),
                                 RetryPolicy.from_config(configs[name].retry), rng=rng, sleep=sleep)
            for name, backend in build_backends(cfg, env).items()
        }
        cache = ResponseCache.from_settings(cfg.cache, clock=clock)
        return cls(guarded, default=cfg.default_backend, cache=cache)

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

    def _lookup(self, chosen: GuardedBackend, model: str, turns: list[Turn], max_tokens: int,
                tools: Sequence[ToolSpec], cache: CacheOptions | None) -> Lookup | None:
        if self.cache is None:
            return None
        return self.cache.lookup(chosen.info, model, turns, tools, max_tokens, cache or CacheOptions())

    async def generate(self, backend: str, model: str, turns: list[Turn], max_tokens: int,
                       tools: Sequence[ToolSpec] = (), cache: CacheOptions | None = None
                       ) -> tuple[BackendInfo, Generation]:
        """The reply (``cached`` when from the cache); ``cache``: the request's caching options."""
        self._check(turns)
        chosen = self.backend(backend)
        lookup = self._lookup(chosen, model, turns, max_tokens, tools, cache)
        if lookup is not None and (hit := await self.cache.get(lookup)) is not None:
            return chosen.info, hit
        gen = await chosen.generate(turns, model, max_tokens, tools)
        if lookup is not None:
            await self.cache.put(lookup, gen)
        return chosen.info, gen

    def stream(self, backend: str, model: str, turns: list[Turn], max_tokens: int,
               tools: Sequence[ToolSpec] = (), cache: CacheOptions | None = None
               ) -> tuple[GuardedBackend, TextStream]:
        """The reply's deltas; a cache hit is one delta, and its ``result`` is ``cached``."""
        self._check(turns)
        chosen = self.backend(backend)
        lookup = self._lookup(chosen, model, turns, max_tokens, tools, cache)
        if lookup is None:
            return chosen, chosen.stream(turns, model, max_tokens, tools)
        return chosen, TextStream(self._cached_stream(lookup, chosen, model, turns, max_tokens, tools))

    async def _cached_stream(self, lookup: Lookup, chosen: GuardedBackend, model: str, turns: list[Turn],
                             max_tokens: int, tools: Sequence[ToolSpec]) -> AsyncIterator[str | Generation]:
        hit = await self.cache.get(lookup)
        if hit is not None:
            yield hit.content
            yield hit
            return
        chunks = chosen.stream(turns, model, max_tokens, tools)
        try:
            async for delta in chunks:
                yield delta
        finally:
            await chunks.aclose()
        await self.cache.put(lookup, chunks.result)  # reached only when the stream completed
        yield chunks.result

    def list(self) -> list[tuple[GuardedBackend, bool]]:
        """Every backend (its ``info``, ``limits`` and ``breaker``), and whether it is the default."""
        return [(b, name == self.default) for name, b in self.backends.items()]

    async def aclose(self) -> None:
        """Close every backend's connections and the cache's (at server stop)."""
        for backend in self.backends.values():
            await backend.aclose()
        if self.cache is not None:
            await self.cache.aclose()
