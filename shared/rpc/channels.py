"""Outbound channels, transports and typed clients: one long-lived channel per target.

    pool = ChannelPool(settings)                          # the client chain comes from settings
    memory = pool.client(MemoryClient, settings.memory.target())
    ...
    await pool.close()

``settings.internal_transport`` picks how a typed client's calls travel:
``stream`` (default) multiplexes them on Exchange streams, ``unary`` makes one
RPC per call. Both go through the same client chain. Channels are made by the process's
security (``shared.security.active()``, or ``security=``): with ``security.mtls`` TLS
presenting this service's certificate, with a mesh token that header on every RPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import grpc

from clawmesh.shared.breaker import BreakerRegistry
from clawmesh.shared.retry import RetryPolicy, RetryThrottle
from clawmesh.shared.rpc.client import ClientInterceptor, ServiceClient, Transport, UnaryTransport
from clawmesh.shared.rpc.exchange_client import ExchangeTransport
from clawmesh.shared.rpc.interceptors import RetryInterceptor, client_chain
from clawmesh.shared.security import Security, active
from clawmesh.shared.settings import MeshSettings

C = TypeVar("C", bound=ServiceClient)


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        # Keepalive so a dead peer (pod gone without FIN) is noticed in ~30 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # gRPC needs L7 balancing: spread calls (and Exchange streams) over every
        # address DNS returns (headless Services in Kubernetes).
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 0),
        # gRPC's default reconnect backoff grows to 120 s: a restarted dependency
        # would stay unreachable for minutes. Inside the mesh, retry within a second.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class ChannelPool:
    """Owns the process's outbound channels and transports, keyed by target."""

    def __init__(self, settings: MeshSettings, max_message_bytes: int = 4 * 1024 * 1024,
                 chain: Sequence[ClientInterceptor] | None = None, security: Security | None = None) -> None:
        self.settings = settings
        self.security = security or active()
        self._options = channel_options(max_message_bytes)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._transports: dict[tuple[str, str], Transport] = {}
        self._chain = None if chain is None else list(chain)
        # One breaker per target and method, shared by every client of this process.
        self.breakers = BreakerRegistry(settings.breaker.config()) if settings.breaker.enabled else None
        self._retries: dict[str, RetryInterceptor] = {}  # one per target: its throttle

    def breaker_gauges(self) -> dict[str, float]:
        """Every breaker's stats as gauges ``<stat>{peer=…,method=…}`` (state: 1 closed, 2 open,
        3 half-open), for ``RpcStats.add_gauges("breaker", pool.breaker_gauges)``."""
        out: dict[str, float] = {}
        for key, stats in (self.breakers.stats() if self.breakers is not None else {}).items():
            peer, _, method = key.partition(" ")
            for name in ("state", "failure_rate", "consecutive_failures", "time_in_current_state",
                         "refused"):
                out[f"{name}{{peer={peer},method={method}}}"] = float(stats[name])
        return out

    def chain(self, target: str) -> list[ClientInterceptor]:
        """The client chain for calls to ``target`` (the one given to the pool, if any)."""
        if self._chain is not None:
            return self._chain
        s = self.settings
        retry = self._retries.get(target)
        if retry is None and s.retry.enabled:
            throttle = RetryThrottle(s.retry.throttle_max_tokens, s.retry.throttle_token_ratio)
            retry = self._retries[target] = RetryInterceptor(RetryPolicy.from_config(s.retry), throttle)
        return client_chain(s.call_timeout_s, s.deadline_reserve_ms, target, self.breakers, retry)

    def channel(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = self.security.channel(target, self._options)
            self._channels[target] = channel
        return channel

    def transport(self, target: str, service: str) -> Transport:
        key = (target, service)
        transport = self._transports.get(key)
        if transport is None:
            if self.settings.internal_transport == "stream":
                transport = ExchangeTransport(self.channel(target), service,
                                              self.settings.streams_per_target,
                                              self.settings.stream_max_age_s)
            else:
                transport = UnaryTransport(self.channel(target))
            self._transports[key] = transport
        return transport

    def client(self, cls: type[C], target: str) -> C:
        """A typed client of ``cls.SERVICE`` at ``target`` over the configured transport."""
        return cls(self.transport(target, cls.SERVICE.full_name), self.chain(target))

    async def close(self) -> None:
        for transport in self._transports.values():
            await transport.close()
        self._transports.clear()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
