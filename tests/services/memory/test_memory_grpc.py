"""In-process gRPC tests: a real memory server on port 0, a real channel, the real chain,
on each backend (SQLite, and Redis from the ``redis_url`` fixture)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import grpc
import pytest
from google.rpc import status_pb2

from clawmesh.common.v1 import common_pb2
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.services.memory.client import MemoryClient
from clawmesh.services.memory.main import build
from clawmesh.shared import metadata as md
from clawmesh.shared.errors import bad_request_fields
from clawmesh.shared.rpc.channels import ChannelPool
from clawmesh.shared.rpcstats import RpcStats
from clawmesh.shared.settings import MeshSettings

T1 = ((md.TENANT, "t1"),)
T2 = ((md.TENANT, "t2"),)
TIMEOUT = 5.0


@asynccontextmanager
async def serve(settings: MeshSettings, stats=None):
    """A started memory server for ``settings`` and a stub on a channel to it."""
    server = await build(settings, stats)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield memory_pb2_grpc.MemoryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


@pytest.fixture(params=["sqlite", "redis"])
def make_settings(request, tmp_path):
    """make_settings(ingest=…, **memory) -> MeshSettings with memory on this test's backend."""

    def make(ingest=None, **memory) -> MeshSettings:
        base = {"port": 0, "data_dir": tmp_path, "sweep_interval_s": 0}
        if request.param == "redis":
            base |= {"backend": "redis", "redis_url": request.getfixturevalue("redis_url"),
                     "redis_durability": "none"}
        return MeshSettings(memory={**base, **memory}, ingest=ingest or {})

    return make


@pytest.fixture
async def stub(make_settings):
    async with serve(make_settings(max_messages_per_session=4)) as stub:
        yield stub


def chat(content: str, role=common_pb2.ROLE_USER, **kw) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content, **kw)


def rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in err.trailing_metadata() or ():
        if key == md.STATUS_DETAILS:
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin in trailing metadata")


async def expect_invalid(call, *fields: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(rich_status(info.value)) == list(fields)


async def test_append_history_roundtrip(stub):
    reply = await stub.Append(
        memory_pb2.AppendRequest(session_id="s", message=chat("hello", name="bob")),
        metadata=T1,
        timeout=TIMEOUT,
    )
    assert (reply.sequence, reply.duplicate) == (1, False)
    batch = await stub.BatchAppend(
        memory_pb2.BatchAppendRequest(
            session_id="s",
            messages=[
                chat(
                    "",
                    common_pb2.ROLE_ASSISTANT,
                    tool_calls=[common_pb2.ToolCall(id="c1", name="f", arguments_json="{}")],
                ),
                chat("42", common_pb2.ROLE_TOOL, tool_call_id="c1", token_count=9),
            ],
            idempotency_key="k",
        ),
        metadata=T1,
        timeout=TIMEOUT,
    )
    assert list(batch.sequences) == [2, 3] and not batch.duplicate
    history = await stub.GetHistory(
        memory_pb2.GetHistoryRequest(session_id="s"), metadata=T1, timeout=TIMEOUT
    )
    assert [m.role for m in history.messages] == [
        common_pb2.ROLE_USER,
        common_pb2.ROLE_ASSISTANT,
        common_pb2.ROLE_TOOL,
    ]
    first, second, third = history.messages
    assert (first.content, first.name, first.token_count) == ("hello", "bob", 2)
    assert first.created_time.seconds > 0
    assert second.tool_calls[0].name == "f" and third.tool_call_id == "c1"
    assert third.token_count == 9
    assert (history.total_messages, history.truncated) == (3, False)


async def test_idempotent_batch_and_window(stub):
    request = memory_pb2.BatchAppendRequest(
        session_id="s", messages=[chat(str(i)) for i in range(3)], idempotency_key="k"
    )
    first = await stub.BatchAppend(request, metadata=T1, timeout=TIMEOUT)
    again = await stub.BatchAppend(request, metadata=T1, timeout=TIMEOUT)
    assert list(first.sequences) == list(again.sequences) == [1, 2, 3]
    assert again.duplicate
    for i in range(3, 6):
        await stub.Append(
            memory_pb2.AppendRequest(session_id="s", message=chat(str(i))),
            metadata=T1,
            timeout=TIMEOUT,
        )
    history = await stub.GetHistory(
        memory_pb2.GetHistoryRequest(session_id="s", limit=3), metadata=T1, timeout=TIMEOUT
    )
    assert [m.content for m in history.messages] == ["3", "4", "5"]
    assert (history.total_messages, history.truncated) == (4, True)


async def test_unknown_session_history_is_empty_and_delete_is_not_found(stub):
    history = await stub.GetHistory(
        memory_pb2.GetHistoryRequest(session_id="new"), metadata=T1, timeout=TIMEOUT
    )
    assert len(history.messages) == 0 and history.total_messages == 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DeleteSession(
            memory_pb2.DeleteSessionRequest(session_id="new"), metadata=T1, timeout=TIMEOUT
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tenants_are_isolated_and_default_tenant_applies(stub):
    await stub.Append(
        memory_pb2.AppendRequest(session_id="s", message=chat("t1 secret")),
        metadata=T1,
        timeout=TIMEOUT,
    )
    other = await stub.GetHistory(
        memory_pb2.GetHistoryRequest(session_id="s"), metadata=T2, timeout=TIMEOUT
    )
    assert len(other.messages) == 0
    assert (
        len(
            (
                await stub.ListSessions(
                    memory_pb2.ListSessionsRequest(), metadata=T2, timeout=TIMEOUT
                )
            ).sessions
        )
        == 0
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DeleteSession(
            memory_pb2.DeleteSessionRequest(session_id="s"), metadata=T2, timeout=TIMEOUT
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await stub.Append(memory_pb2.AppendRequest(session_id="d", message=chat("x")), timeout=TIMEOUT)
    default = await stub.ListSessions(
        memory_pb2.ListSessionsRequest(), metadata=((md.TENANT, "default"),), timeout=TIMEOUT
    )
    assert [s.session_id for s in default.sessions] == ["d"]


async def test_list_delete_and_stats(stub):
    for name in ("a", "b", "c"):
        await stub.Append(
            memory_pb2.AppendRequest(session_id=name, message=chat("abcd")),
            metadata=T1,
            timeout=TIMEOUT,
        )
    page = await stub.ListSessions(
        memory_pb2.ListSessionsRequest(page_size=2), metadata=T1, timeout=TIMEOUT
    )
    assert [s.session_id for s in page.sessions] == ["a", "b"] and page.next_page_token
    assert page.sessions[0].message_count == 1 and page.sessions[0].token_count == 1
    assert page.sessions[0].updated_time.seconds > 0
    rest = await stub.ListSessions(
        memory_pb2.ListSessionsRequest(page_size=2, page_token=page.next_page_token),
        metadata=T1,
        timeout=TIMEOUT,
    )
    assert [s.session_id for s in rest.sessions] == ["c"] and rest.next_page_token == ""
    deleted = await stub.DeleteSession(
        memory_pb2.DeleteSessionRequest(session_id="b"), metadata=T1, timeout=TIMEOUT
    )
    assert deleted.deleted_messages == 1
    stats = await stub.Stats(memory_pb2.StatsRequest(), metadata=T1, timeout=TIMEOUT)
    assert (stats.sessions, stats.messages, stats.content_bytes, stats.tokens) == (2, 2, 8, 2)
    assert (stats.trimmed_messages, stats.expired_sessions, stats.expired_messages) == (0, 0, 0)


async def test_invalid_arguments_name_the_field_and_server_keeps_serving(stub):
    call = dict(metadata=T1, timeout=TIMEOUT)
    A, B = memory_pb2.AppendRequest, memory_pb2.BatchAppendRequest
    await expect_invalid(stub.Append(A(message=chat("x")), **call), "session_id")
    await expect_invalid(
        stub.Append(A(session_id="s" * 257, message=chat("x")), **call), "session_id"
    )
    await expect_invalid(stub.Append(A(session_id="s"), **call), "message")
    await expect_invalid(
        stub.Append(A(session_id="s", message=chat("x", common_pb2.ROLE_UNSPECIFIED)), **call),
        "message.role",
    )
    await expect_invalid(
        stub.Append(A(session_id="s", message=chat("x", 99)), **call), "message.role"
    )
    await expect_invalid(
        stub.Append(A(session_id="s", message=chat("x" * (256 * 1024 + 1))), **call),
        "message.content",
    )
    await expect_invalid(
        stub.Append(A(session_id="s", message=chat("x"), idempotency_key="k" * 257), **call),
        "idempotency_key",
    )
    await expect_invalid(stub.BatchAppend(B(session_id="s"), **call), "messages")
    await expect_invalid(
        stub.BatchAppend(B(session_id="s", messages=[chat("x")] * 101), **call), "messages"
    )
    await expect_invalid(
        stub.BatchAppend(
            B(
                session_id="s",
                messages=[chat("a"), chat("b"), chat("c", common_pb2.ROLE_UNSPECIFIED)],
            ),
            **call,
        ),
        "messages[2].role",
    )
    await expect_invalid(
        stub.BatchAppend(B(messages=[chat("a", 0)]), **call), "session_id", "messages[0].role"
    )
    await expect_invalid(stub.GetHistory(memory_pb2.GetHistoryRequest(), **call), "session_id")
    await expect_invalid(
        stub.DeleteSession(memory_pb2.DeleteSessionRequest(), **call), "session_id"
    )
    await expect_invalid(
        stub.ListSessions(memory_pb2.ListSessionsRequest(page_size=1001), **call), "page_size"
    )
    await expect_invalid(
        stub.ListSessions(memory_pb2.ListSessionsRequest(page_token="not a token"), **call),
        "page_token",
    )
    # Nothing was stored by the bad calls, and the server still serves.
    reply = await stub.Append(A(session_id="s", message=chat("ok")), **call)
    assert reply.sequence == 1


async def test_invalid_argument_status_is_consistent_for_grpc_status(stub):
    from grpc_status import rpc_status

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetHistory(memory_pb2.GetHistoryRequest(), metadata=T1, timeout=TIMEOUT)
    status = rpc_status.from_call(info.value)
    assert status is not None and bad_request_fields(status) == ["session_id"]


async def test_idempotency_keys_are_per_session(stub):
    call = dict(metadata=T1, timeout=TIMEOUT)
    A = memory_pb2.AppendRequest
    first = await stub.Append(A(session_id="a", message=chat("x"), idempotency_key="k"), **call)
    other = await stub.Append(A(session_id="b", message=chat("y"), idempotency_key="k"), **call)
    again = await stub.Append(A(session_id="a", message=chat("x"), idempotency_key="k"), **call)
    assert (first.sequence, first.duplicate) == (1, False)
    assert (other.sequence, other.duplicate) == (1, False)
    assert (again.sequence, again.duplicate) == (1, True)


async def test_history_after_a_sequence_with_last_sequence_and_epoch(stub):
    call = dict(metadata=T1, timeout=TIMEOUT)
    H = memory_pb2.GetHistoryRequest
    request = memory_pb2.BatchAppendRequest(
        session_id="s", messages=[chat(str(i)) for i in range(1, 4)], idempotency_key="k"
    )
    first = await stub.BatchAppend(request, **call)
    again = await stub.BatchAppend(request, **call)
    assert first.session_epoch > 0 and not first.duplicate
    assert again.duplicate and again.session_epoch == first.session_epoch
    since = await stub.GetHistory(H(session_id="s", after_sequence=1), **call)
    assert [m.content for m in since.messages] == ["2", "3"]
    assert (since.total_messages, since.truncated) == (3, False)
    assert (since.last_sequence, since.session_epoch) == (3, first.session_epoch)
    newest = await stub.GetHistory(H(session_id="s", after_sequence=1, limit=1), **call)
    assert [m.content for m in newest.messages] == ["3"] and newest.truncated
    current = await stub.GetHistory(H(session_id="s", after_sequence=3), **call)
    assert (len(current.messages), current.truncated, current.last_sequence) == (0, False, 3)
    # Deleted and created again: sequences restart, the epoch tells the cache apart.
    await stub.DeleteSession(memory_pb2.DeleteSessionRequest(session_id="s"), **call)
    reborn = await stub.BatchAppend(request, **call)
    assert list(reborn.sequences) == [1, 2, 3] and not reborn.duplicate
    assert reborn.session_epoch not in (0, first.session_epoch)
    history = await stub.GetHistory(H(session_id="s"), **call)
    assert (history.last_sequence, history.session_epoch) == (3, reborn.session_epoch)
    missing = await stub.GetHistory(H(session_id="none", after_sequence=2), **call)
    assert (missing.last_sequence, missing.session_epoch, len(missing.messages)) == (0, 0, 0)


async def test_limits_and_default_tenant_come_from_settings(make_settings):
    settings = make_settings(
        ingest={"default_tenant": "acme"},
        max_id_chars=4,
        max_content_bytes=8,
        max_batch_messages=2,
        default_page_size=2,
        max_page_size=3,
    )
    async with serve(settings) as stub:
        call = dict(metadata=T1, timeout=TIMEOUT)
        A, B = memory_pb2.AppendRequest, memory_pb2.BatchAppendRequest
        await expect_invalid(
            stub.Append(A(session_id="abcde", message=chat("x")), **call), "session_id"
        )
        await expect_invalid(
            stub.Append(A(session_id="s", message=chat("x"), idempotency_key="kkkkk"), **call),
            "idempotency_key",
        )
        await expect_invalid(
            stub.Append(A(session_id="s", message=chat("x" * 9)), **call), "message.content"
        )
        await expect_invalid(
            stub.BatchAppend(B(session_id="s", messages=[chat("x")] * 3), **call), "messages"
        )
        await expect_invalid(
            stub.ListSessions(memory_pb2.ListSessionsRequest(page_size=4), **call), "page_size"
        )
        for name in ("abcd", "b", "c"):
            await stub.Append(A(session_id=name, message=chat("x" * 8)), **call)
        await stub.BatchAppend(B(session_id="d", messages=[chat("1"), chat("2")]), **call)
        page = await stub.ListSessions(memory_pb2.ListSessionsRequest(), **call)
        assert [s.session_id for s in page.sessions] == ["abcd", "b"] and page.next_page_token
        # No tenant metadata: the same default tenant as ingest's.
        await stub.Append(A(session_id="s", message=chat("hi")), timeout=TIMEOUT)
        acme = await stub.ListSessions(
            memory_pb2.ListSessionsRequest(), metadata=((md.TENANT, "acme"),), timeout=TIMEOUT
        )
        assert [s.session_id for s in acme.sessions] == ["s"]


async def test_search_returns_hits_with_sequences_newest_first(stub):
    call = dict(metadata=T1, timeout=TIMEOUT)
    texts = ["I like green tea", "coffee", "Tea with milk", "more TEA"]
    await stub.BatchAppend(memory_pb2.BatchAppendRequest(session_id="s", messages=[chat(t) for t in texts]),
                           **call)
    found = await stub.Search(memory_pb2.SearchRequest(session_id="s", query="tea"), **call)
    assert [(h.sequence, h.message.content) for h in found.hits] == [
        (4, "more TEA"), (3, "Tea with milk"), (1, "I like green tea")]
    limited = await stub.Search(memory_pb2.SearchRequest(session_id="s", query="tea", limit=1), **call)
    assert [h.sequence for h in limited.hits] == [4]
    assert found.hits[0].message.role == common_pb2.ROLE_USER and found.hits[0].message.token_count == 2


async def test_search_arguments_are_checked(stub):
    call = dict(metadata=T1, timeout=TIMEOUT)
    S = memory_pb2.SearchRequest
    await expect_invalid(stub.Search(S(query="tea"), **call), "session_id")
    await expect_invalid(stub.Search(S(session_id="s"), **call), "query")
    await expect_invalid(stub.Search(S(session_id="s", query="?!"), **call), "query")
    await expect_invalid(stub.Search(S(session_id="s", query="x" * 1001), **call), "query")
    await expect_invalid(stub.Search(S(session_id="s", query="tea", limit=101), **call), "limit")
    assert len((await stub.Search(S(session_id="none", query="tea"), **call)).hits) == 0


async def test_search_is_per_tenant(stub):
    await stub.Append(memory_pb2.AppendRequest(session_id="s", message=chat("t1 secret")),
                      metadata=T1, timeout=TIMEOUT)
    mine = await stub.Search(memory_pb2.SearchRequest(session_id="s", query="secret"), metadata=T1,
                             timeout=TIMEOUT)
    theirs = await stub.Search(memory_pb2.SearchRequest(session_id="s", query="secret"), metadata=T2,
                               timeout=TIMEOUT)
    assert (len(mine.hits), len(theirs.hits)) == (1, 0)


async def test_a_page_token_of_another_tenant_is_invalid(stub):
    for name in ("a", "b"):
        for tenant in (T1, T2):
            await stub.Append(memory_pb2.AppendRequest(session_id=name, message=chat("x")),
                              metadata=tenant, timeout=TIMEOUT)
    page = await stub.ListSessions(memory_pb2.ListSessionsRequest(page_size=1), metadata=T1,
                                   timeout=TIMEOUT)
    await expect_invalid(stub.ListSessions(
        memory_pb2.ListSessionsRequest(page_size=1, page_token=page.next_page_token),
        metadata=T2, timeout=TIMEOUT), "page_token")


async def test_token_limits_trim_and_reject(make_settings):
    async with serve(make_settings(max_tokens_per_session=10)) as stub:
        call = dict(metadata=T1, timeout=TIMEOUT)
        A, B = memory_pb2.AppendRequest, memory_pb2.BatchAppendRequest
        await expect_invalid(stub.Append(A(session_id="s", message=chat("x", token_count=11)), **call),
                             "message.token_count")
        too_big = B(session_id="s", messages=[chat("a"), chat("y" * 41)])  # 11 tokens, estimated
        await expect_invalid(stub.BatchAppend(too_big, **call), "messages[1].content")
        pair = [chat("a", token_count=6), chat("b", token_count=6)]
        await stub.BatchAppend(B(session_id="s", messages=pair), **call)
        history = await stub.GetHistory(memory_pb2.GetHistoryRequest(session_id="s"), **call)
        assert [m.content for m in history.messages] == ["b"]
        stats = await stub.Stats(memory_pb2.StatsRequest(), **call)
        assert (stats.messages, stats.tokens, stats.trimmed_messages) == (1, 6, 1)


async def test_memory_client_search_and_gauges(make_settings):
    stats = RpcStats()
    settings = make_settings()
    server = await build(settings, stats)
    await server.start()
    pool = ChannelPool(settings)
    try:
        memory = pool.client(MemoryClient, server.address)  # Exchange streams, the mesh's own hops
        await memory.append("s", [chat("green tea"), chat("black tea")], idempotency_key="k")
        found = await memory.search("s", "tea", limit=1)
        assert [(h.sequence, h.message.content) for h in found.hits] == [(2, "black tea")]
        assert len((await memory.search("s", "coffee")).hits) == 0
        gauges = await stats.collect_gauges()
        assert gauges["clawmesh.memory.sessions"] == 1
        assert gauges["clawmesh.memory.trimmed_messages"] == 0
    finally:
        await pool.close()
        await server.stop(0)
