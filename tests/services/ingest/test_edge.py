"""The edge gate through the running mesh: dedup with replay and coalescing, rate limits.

Real servers in-process, real channels; the provider's own RPC counters say how
often a message really reached the model.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from clawmesh.common.v1 import common_pb2
from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from clawmesh.services.registry import by_name
from clawmesh.shared.rpcstats import RpcStats
from tests.conftest import trailing_status
from tests.inproc import inproc_mesh

GENERATE = "/clawmesh.provider.v1.ProviderService/Generate"
TENANT = (("x-clawmesh-tenant", "acme"),)


def inbound(text="hi", session="s1", msg_id="", **kw):
    return common_pb2.InboundMessage(channel="telegram", sender="u1", session_id=session,
                                     content=text, channel_message_id=msg_id, **kw)


def generated(stats: RpcStats) -> int:
    return sum(s.count for s in stats.snapshot() if s.method == GENERATE)


@pytest.fixture
async def mesh(settings):
    settings.provider.mock_latency_ms = 200  # copies arrive while the original is in flight
    stats = RpcStats()
    async with inproc_mesh(settings, stats) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            yield ingest_pb2_grpc.IngestServiceStub(channel), stats


async def test_copies_in_flight_reach_the_model_once_and_all_get_its_reply(mesh):
    ingest, stats = mesh
    calls = [ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id="m-1")),
                           metadata=TENANT, timeout=5) for _ in range(3)]
    replies = await asyncio.gather(*calls)
    assert generated(stats) == 1
    assert len({r.reply.reply_id for r in replies}) == 1
    assert sorted(r.replayed for r in replies) == [False, True, True]
    marks = [dict(await c.trailing_metadata()).get("x-clawmesh-replayed") for c in calls]
    assert sorted(m or "" for m in marks) == ["", "true", "true"]


async def test_a_copy_of_a_finished_message_is_replayed(mesh):
    ingest, stats = mesh
    first = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id="m-2")),
                                metadata=TENANT, timeout=5)
    again = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("edited", msg_id="m-2")),
                                metadata=TENANT, timeout=5)
    assert again.replayed and again.reply == first.reply and generated(stats) == 1
    # Streamed and conversed copies are replayed too; the header key works like the body's.
    chunks = [r.chunk async for r in ingest.SubmitStream(
        ingest_pb2.SubmitStreamRequest(message=inbound(msg_id="m-2")), metadata=TENANT, timeout=5)]
    assert len(chunks) == 1 and chunks[0].final and chunks[0].reply == first.reply
    conv = ingest.Converse(iter([ingest_pb2.ConverseRequest(message=inbound(msg_id="m-2"))]),
                           metadata=TENANT, timeout=5)
    [answer] = [r async for r in conv]
    assert answer.replayed and answer.reply == first.reply
    keyed = [await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(f"k{i}")), timeout=5,
                                 metadata=(*TENANT, ("x-clawmesh-idempotency-key", "op-7")))
             for i in range(2)]
    assert [k.replayed for k in keyed] == [False, True] and generated(stats) == 2


async def test_different_sessions_and_id_less_messages_are_never_copies(mesh):
    ingest, stats = mesh
    a, b = [await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(session=s, msg_id="1")),
                                metadata=TENANT, timeout=5) for s in ("chat-a", "chat-b")]
    yes = [await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("yes", session="s-yes")),
                               metadata=TENANT, timeout=5) for _ in range(2)]
    assert not a.replayed and not b.replayed and a.reply.reply_id != b.reply.reply_id
    assert [y.replayed for y in yes] == [False, False] and generated(stats) == 4
    assert "1 earlier turn(s)" in yes[1].reply.content


async def test_a_burst_over_the_limit_is_refused_with_retry_info_but_critical_passes(settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("rate_limits:\n  rules:\n"
                      "    - match: {tenant: '*', priority: normal}\n"
                      "      limits: [{name: normal-burst, rate: 1, per: minute, burst: 3}]\n")
    settings.ingest.policy_file = policy
    async with inproc_mesh(settings) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            left = []
            for i in range(3):
                call = ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(f"n{i}")),
                                     metadata=TENANT, timeout=5)
                await call
                left.append(dict(await call.trailing_metadata())["x-clawmesh-quota-remaining"])
            assert left == ["2", "1", "0"]  # the remaining quota travels with each answer
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("one too many")),
                                    metadata=TENANT, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = trailing_status(err.value).details
            retry = error_details_pb2.RetryInfo()
            assert any(d.Unpack(retry) for d in details if d.Is(retry.DESCRIPTOR))
            assert 55 < retry.retry_delay.ToTimedelta().total_seconds() <= 60  # 1 per minute
            critical = await ingest.Submit(ingest_pb2.SubmitRequest(
                message=inbound("urgent", priority=common_pb2.PRIORITY_CRITICAL)),
                metadata=TENANT, timeout=5)
            assert "urgent" in critical.reply.content
            # Another tenant has its own quota.
            other = await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("hello")),
                                        metadata=(("x-clawmesh-tenant", "other"),), timeout=5)
            assert not other.replayed


async def test_two_ingest_replicas_sharing_redis_answer_a_copy_once(settings, tmp_path, redis_url):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"backend: {{kind: redis, redis_url: '{redis_url}'}}\n")
    settings.ingest.policy_file = policy
    settings.provider.mock_latency_ms = 300
    stats = RpcStats()
    async with inproc_mesh(settings, stats, services=("memory", "provider", "routing")):
        replicas = [await by_name("ingest").build(settings) for _ in range(2)]
        for server in replicas:
            await server.start()
        channels = [grpc.aio.insecure_channel(s.address) for s in replicas]
        try:
            stubs = [ingest_pb2_grpc.IngestServiceStub(c) for c in channels]
            replies = await asyncio.gather(*(
                stub.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id="webhook-9")),
                            metadata=TENANT, timeout=5) for stub in stubs))
            assert generated(stats) == 1
            assert replies[0].reply == replies[1].reply
            assert sorted(r.replayed for r in replies) == [False, True]
        finally:
            for c in channels:
                await c.close()
            for server in replicas:
                await server.stop(0)


async def test_content_window_is_opt_in_and_answers_a_copy_with_the_replay(settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("dedup: {content_window_s: 30}\n")
    settings.ingest.policy_file = policy
    stats = RpcStats()
    async with inproc_mesh(settings, stats) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            first, copy = [await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound("ok?")),
                                               metadata=TENANT, timeout=5) for _ in range(2)]
            other = await ingest.Submit(ingest_pb2.SubmitRequest(
                message=inbound("ok?", session="s-other")), metadata=TENANT, timeout=5)
    assert not first.replayed and copy.replayed and copy.reply == first.reply
    assert not other.replayed and generated(stats) == 2


@pytest.mark.parametrize("on_error, code", [("fail_open", None),
                                            ("fail_closed", grpc.StatusCode.UNAVAILABLE)])
async def test_a_stalled_redis_costs_at_most_its_timeout(settings, tmp_path, redis_server, redis_url,
                                                          on_error, code):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"backend: {{kind: redis, redis_url: '{redis_url}', op_timeout_ms: 50,"
                      f" on_error: {on_error}}}\n"
                      "rate_limits: {rules: [{match: {tenant: '*'}, limits: [{name: t, rate: 1000}]}]}\n")
    settings.ingest.policy_file = policy
    async with inproc_mesh(settings) as servers:
        async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id="before")),
                                metadata=TENANT, timeout=5)
            loop = asyncio.get_running_loop()
            redis_server.pause()
            try:
                for i in range(3):
                    started = loop.time()
                    call = ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(msg_id=f"p{i}")),
                                         metadata=TENANT, timeout=5)
                    if code is None:
                        assert not (await call).replayed
                    else:
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            await call
                        assert err.value.code() == code
                    assert loop.time() - started < 1.0  # a few 50 ms timeouts, never a stall
            finally:
                redis_server.resume()
            # Back to normal (the limiter asks Redis again after its 1 s probe interval):
            # copies are recognised again.
            replayed = False
            for _ in range(60):
                try:
                    replayed = (await ingest.Submit(ingest_pb2.SubmitRequest(
                        message=inbound(msg_id="before")), metadata=TENANT, timeout=5)).replayed
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == code  # fail_closed until the probe
                if replayed:
                    break
                await asyncio.sleep(0.05)  # polling another process's recovery
            assert replayed


async def test_reload_applies_a_new_policy_keeps_state_and_rejects_a_bad_file(settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("dedup: {ttl_s: 600}\n")
    settings.ingest.policy_file = policy
    async with inproc_mesh(settings) as servers:
        ingest_server = servers["ingest"]
        async with grpc.aio.insecure_channel(ingest_server.address) as channel:
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)

            async def send(text, msg_id=""):
                return await ingest.Submit(ingest_pb2.SubmitRequest(
                    message=inbound(text, msg_id=msg_id)), metadata=TENANT, timeout=5)

            await send("a", msg_id="kept")
            policy.write_text("dedup: {ttl_s: 600}\n"
                              "rate_limits: {rules: [{match: {tenant: '*'},"
                              " limits: [{name: tight, rate: 1, per: hour, burst: 2}]}]}\n")
            await ingest_server.reload()  # what SIGHUP runs
            assert (await send("again", msg_id="kept")).replayed  # dedup state survived (1 quota)
            await send("b")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await send("c")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "tight" in err.value.details()
            policy.write_text("rate_limits: {rules: [{match: {color: red}}]}\n")  # invalid
            await ingest_server.reload()
            with pytest.raises(grpc.aio.AioRpcError):  # the running policy stays
                await send("d")


async def test_redis_killed_mid_run_then_back_limits_apply_again(settings, tmp_path):
    from tests.redis_server import RedisServer

    redis = RedisServer()  # this test's own: it gets killed
    try:
        policy = tmp_path / "policy.yaml"
        policy.write_text(f"backend: {{kind: redis, redis_url: '{redis.url}', op_timeout_ms: 50}}\n"
                          "rate_limits: {rules: [{match: {tenant: '*'},"
                          " limits: [{name: t, rate: 1, per: hour, burst: 2}]}]}\n")
        settings.ingest.policy_file = policy
        async with inproc_mesh(settings) as servers:
            async with grpc.aio.insecure_channel(servers["ingest"].address) as channel:
                ingest = ingest_pb2_grpc.IngestServiceStub(channel)

                async def send(text):
                    return await ingest.Submit(ingest_pb2.SubmitRequest(message=inbound(text)),
                                               metadata=TENANT, timeout=5)

                loop = asyncio.get_running_loop()
                redis.kill()
                for i in range(4):  # fail_open: answered, over the limit or not
                    started = loop.time()
                    assert "mock reply" in (await send(f"down {i}")).reply.content
                    assert loop.time() - started < 1.0
                redis.restart()
                refused = None
                for i in range(100):  # reconnect, then the limit of 2 applies again
                    try:
                        await send(f"up {i}")
                    except grpc.aio.AioRpcError as exc:
                        refused = exc
                        break
                    await asyncio.sleep(0.05)  # the limiter probes Redis after its interval
                assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        redis.stop()


async def test_shadow_mode_counts_what_it_would_refuse_and_lets_everything_through():
    from clawmesh.services.ingest.edge import EdgeGate
    from clawmesh.shared.policy import EdgePolicy

    policy = EdgePolicy.model_validate({
        "dedup": {"enforce": False},
        "rate_limits": {"enforce": False, "rules": [
            {"match": {"tenant": "*"}, "limits": [{"name": "one", "rate": 1, "per": "hour", "burst": 1}]}]},
        "admission": {"enforce": False, "initial_limit": 1, "min_limit": 1, "max_queue": 0},
    })
    now = [0.0]
    gate = EdgeGate.from_policy(policy, clock=lambda: now[0])
    produced = 0
    release, both = asyncio.Event(), asyncio.Event()

    async def produce():
        nonlocal produced
        produced += 1
        if produced == 2:
            both.set()
        await release.wait()
        return common_pb2.Reply(content=f"r{produced}")

    message = inbound(msg_id="same", tenant="t")
    message.idempotency_key = "k"
    first = asyncio.ensure_future(gate.unary(message, "Submit", True, produce))
    await asyncio.sleep(0)  # let the first hold its (shadow) slot
    second = asyncio.ensure_future(gate.unary(message, "Submit", True, produce))
    await asyncio.wait_for(both.wait(), 5)  # shadow mode let the copy through to produce
    release.set()
    results = await asyncio.gather(first, second)
    assert [o.replayed for o in results] == [False, False]  # both really produced
    assert gate.shadow == {"rate_limited": 1, "replayed": 1, "admission_refused": 1}
    await gate.close()
