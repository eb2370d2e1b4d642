"""Provider core: picks the backend for a request and runs it. No gRPC types."""

from __future__ import annotations

from collections.abc import Sequence

from clawmesh.services.provider.backends import Backend, BackendInfo, Generation, TextStream, ToolSpec, Turn
from clawmesh.shared.errors import InvalidArgument


class Provider:
    """Named backends with a default.

        provider = Provider({"mock": MockBackend()}, default="mock")
        gen = await provider.generate("", "", [Turn("user", "hi")], 0)
    """

    def __init__(self, backends: dict[str, Backend], default: str) -> None:
        if default not in backends:
            raise ValueError(f"default backend {default!r} is not configured")
        self.backends = backends
        self.default = default

    def backend(self, name: str) -> Backend:
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
               tools: Sequence[ToolSpec] = ()) -> tuple[Backend, TextStream]:
        self._check(turns)
        chosen = self.backend(backend)
        return chosen, chosen.stream(turns, model, max_tokens, tools)

    def list(self) -> list[tuple[BackendInfo, bool]]:
        return [(b.info, name == self.default) for name, b in self.backends.items()]

    async def aclose(self) -> None:
        """Close every backend's connections (at server stop)."""
        for backend in self.backends.values():
            await backend.aclose()
