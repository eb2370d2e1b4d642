import time

import pytest

from clawmesh.shared import context as callctx
from clawmesh.shared import metadata as md
from clawmesh.shared.errors import DeadlineExceeded


def _with(info):
    token = callctx.set_current(info)
    return token


def test_outside_a_call_uses_the_default_timeout_and_no_metadata():
    assert callctx.call_options(7.0) == {"timeout": 7.0, "metadata": ()}


def test_remaining_deadline_minus_reserve_caps_the_timeout():
    info = callctx.CallInfo("/x", time.monotonic() + 2.0, {md.TENANT: "t1", "user-agent": "x"})
    token = _with(info)
    try:
        opts = callctx.call_options(30.0, reserve_ms=500)
    finally:
        callctx.reset(token)
    assert 1.3 < opts["timeout"] <= 1.5
    # Only the propagated keys travel; user-agent stays behind.
    assert opts["metadata"] == ((md.TENANT, "t1"),)


def test_extra_headers_override_propagated_ones():
    token = _with(callctx.CallInfo("/x", None, {md.TENANT: "t1"}))
    try:
        opts = callctx.call_options(3.0, headers={md.TENANT: "t2", md.REQUEST_ID: "r1"})
    finally:
        callctx.reset(token)
    assert dict(opts["metadata"]) == {md.TENANT: "t2", md.REQUEST_ID: "r1"}
    assert opts["timeout"] == 3.0


def test_spent_deadline_raises_deadline_exceeded():
    token = _with(callctx.CallInfo("/x", time.monotonic() - 0.001, {}))
    try:
        with pytest.raises(DeadlineExceeded):
            callctx.call_options(30.0)
    finally:
        callctx.reset(token)
