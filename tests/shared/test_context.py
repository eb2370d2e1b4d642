"""The client chain's propagation: deadline minus reserve, propagated metadata."""

import time

import pytest

from clawmesh.shared import context as callctx
from clawmesh.shared import metadata as md
from clawmesh.shared.errors import DeadlineExceeded
from clawmesh.shared.rpc.client import Call
from clawmesh.shared.rpc.interceptors import PropagationInterceptor


async def _sent(info, call: Call, cap_s=30.0, reserve_ms=5.0) -> Call:
    seen = []

    async def transport(c):
        seen.append(c)
        return "ok"

    token = callctx.set_current(info)
    try:
        assert await PropagationInterceptor(cap_s, reserve_ms).unary(call, transport) == "ok"
    finally:
        callctx.reset(token)
    return seen[0]


def _call(metadata=()):
    return Call("/pkg.Svc/M", object(), object, metadata=metadata)


async def test_outside_a_call_uses_the_cap_and_no_metadata():
    sent = await _sent(None, _call(), cap_s=7.0)
    assert sent.timeout == 7.0 and sent.metadata == ()


async def test_remaining_deadline_minus_reserve_caps_the_timeout():
    info = callctx.CallInfo("/x", time.monotonic() + 2.0, {md.TENANT: "t1", "user-agent": "x"})
    sent = await _sent(info, _call(), reserve_ms=500)
    assert 1.3 < sent.timeout <= 1.5
    # Only the propagated keys travel; user-agent stays behind.
    assert sent.metadata == ((md.TENANT, "t1"),)


async def test_call_site_headers_override_propagated_ones():
    info = callctx.CallInfo("/x", None, ((md.TENANT, "t1"), (md.PRIORITY, "high")))
    sent = await _sent(info, _call(((md.TENANT, "t2"), (md.REQUEST_ID, "r1"))), cap_s=3.0)
    assert dict(sent.metadata) == {md.TENANT: "t2", md.REQUEST_ID: "r1", md.PRIORITY: "high"}
    assert sent.timeout == 3.0


async def test_spent_deadline_raises_before_calling_out():
    info = callctx.CallInfo("/x", time.monotonic() - 0.001, {})
    with pytest.raises(DeadlineExceeded):
        await _sent(info, _call())


def test_call_info_builds_its_views_once():
    info = callctx.CallInfo("/x", None, ((md.TENANT, "t1"), ("x-other", "v")))
    assert info.headers is info.headers
    assert info.propagated is info.propagated and info.propagated == ((md.TENANT, "t1"),)
