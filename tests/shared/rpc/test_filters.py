"""Bypass filters compose, and the default one skips health, reflection and Exchange."""

from clawmesh.shared.rpc.filters import any_of, default_bypass, methods, prefixes


def test_default_bypass_skips_infrastructure_and_exchange_streams_only():
    assert default_bypass("/grpc.health.v1.Health/Check")
    assert default_bypass("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert default_bypass("/clawmesh.memory.v1.MemoryService/Exchange")
    assert not default_bypass("/clawmesh.memory.v1.MemoryService/GetHistory")


def test_filters_compose():
    f = any_of(prefixes("/a."), methods("/b.Svc/Ping"))
    assert f("/a.Svc/X") and f("/b.Svc/Ping")
    assert not f("/b.Svc/Pong")
