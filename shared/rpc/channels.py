"""Client channels: one long-lived grpc.aio channel per target, never per call.

    pool = ChannelPool()
    memory = MemoryServiceStub(pool.get(settings.memory.target()))
    ...
    await pool.close()
"""

from __future__ import annotations

import grpc


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        # Keepalive so a dead peer (pod gone without FIN) is noticed in ~30 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # gRPC needs L7 balancing: spread calls over every address DNS returns
        # (headless Services in Kubernetes).
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 0),
        # gRPC's default reconnect backoff grows to 120 s: a restarted dependency
        # would stay unreachable for minutes. Inside the mesh, retry within a second.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class ChannelPool:
    """Owns the process's outbound channels, keyed by target."""

    def __init__(self, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self._options = channel_options(max_message_bytes)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(target, options=self._options)
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

