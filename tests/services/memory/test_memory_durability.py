"""An acknowledged append survives kill -9: of the store's process, and of the memory service
(`clawmesh serve memory`, SQLite or Redis — with Redis, of the redis-server too)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.launcher.mesh import MeshProcesses, child_env
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.services.memory.records import Limits, Message
from clawmesh.services.memory.sqlite_store import SqliteStore
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
ACKED = 25
WRITERS = 4  # concurrent appenders, one session each
ACKED_BEFORE_KILL = 120  # acknowledged batches (all writers) before the kill

# Appends pairs of messages forever, printing each acknowledged result; killed by the test.
CHILD = """
import asyncio, sys
from clawmesh.services.memory.records import Limits, Message
from clawmesh.services.memory.sqlite_store import SqliteStore

async def main():
    store = await SqliteStore.open(sys.argv[1], Limits(max_messages=100_000))
    i = 0
    while True:
        i += 1
        batch = [Message(role=2, content=f"q{i}"), Message(role=3, content=f"a{i}")]
        result = await store.append("t", "s", batch, idempotency_key=f"k{i}")
        print(i, *result.sequences, flush=True)

asyncio.run(main())
"""


def test_acknowledged_appends_survive_sigkill_of_the_store_process(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[tuple[int, int, int]] = []
    try:
        while len(acked) < ACKED:
            line = child.stdout.readline()
            assert line, f"child exited early: {child.stderr.read()}"
            acked.append(tuple(int(x) for x in line.split()))
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    async def reopen():
        store = await SqliteStore.open(tmp_path, Limits(max_messages=100_000))
        try:
            history = await store.history("t", "s", limit=100_000)
            i, _, _ = acked[-1]
            repeat = await store.append("t", "s", [Message(role=2, content="x")], f"k{i}")
            return history, repeat
        finally:
            await store.close()

    history, repeat = asyncio.run(reopen())
    stored = {m.sequence: m.content for m in history.messages}
    for i, q_seq, a_seq in acked:
        assert (q_seq, a_seq) == (2 * i - 1, 2 * i)
        assert stored[q_seq] == f"q{i}" and stored[a_seq] == f"a{i}"
    # Whole batches only: what the child committed after its last print is complete too.
    assert len(stored) % 2 == 0 and sorted(stored) == list(range(1, len(stored) + 1))
    assert repeat.duplicate and repeat.sequences == list(acked[-1][1:])


# -- the memory service, as a process -----------------------------------------------------


def batch(session: str, i: int) -> memory_pb2.BatchAppendRequest:
    return memory_pb2.BatchAppendRequest(
        session_id=session, idempotency_key=f"{session}-k{i}",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"q{i}"),
                  common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=f"a{i}")])


class Writer:
    """Appends batch 1, 2, 3 … to its session until a call fails; keeps what was acknowledged
    and the batch in flight when it failed (stored or not: unknown)."""

    def __init__(self, stub, session: str) -> None:
        self.stub, self.session = stub, session
        self.acked: list[tuple[int, list[int]]] = []
        self.in_flight: int | None = None

    async def run(self) -> None:
        i = 0
        while True:
            i += 1
            self.in_flight = i
            try:
                reply = await self.stub.BatchAppend(batch(self.session, i), timeout=5)
            except grpc.aio.AioRpcError:
                return
            self.acked.append((i, list(reply.sequences)))
            self.in_flight = None


def memory_env(tmp_path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
    return child_env(base, {
        "CLAWMESH_MEMORY__PORT": str(free_port()),
        "CLAWMESH_MEMORY__DATA_DIR": str(tmp_path / "data"),
        "CLAWMESH_MEMORY__MAX_MESSAGES_PER_SESSION": "100000",
        "CLAWMESH_TELEMETRY__ENABLED": "false",
        "CLAWMESH_LOG_LEVEL": "WARNING",
        **extra,
    })


async def crash_and_check(mesh: MeshProcesses, kill_backend=None, restart_backend=None) -> None:
    """Writers append while memory (and its backend) is SIGKILLed; after a restart, every
    acknowledged batch is stored exactly once, in order, and a retry of the batch that was in
    flight (same key, as a client would) stores it at most once."""
    await mesh.start()
    try:
        async with grpc.aio.insecure_channel(mesh.target("memory")) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            writers = [Writer(stub, f"s{w}") for w in range(WRITERS)]
            tasks = [asyncio.create_task(w.run()) for w in writers]
            for _ in range(1000):
                if sum(len(w.acked) for w in writers) >= ACKED_BEFORE_KILL:
                    break
                await asyncio.sleep(0.01)
            if kill_backend is not None:
                kill_backend()
            mesh.signal("memory", signal.SIGKILL)
            assert await mesh.wait_exit("memory", 10) == -signal.SIGKILL
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        if restart_backend is not None:
            restart_backend()
        await mesh.restart("memory")
        async with grpc.aio.insecure_channel(mesh.target("memory")) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            for w in writers:
                assert len(w.acked) > 0, "no append was acknowledged before the kill"
                last = w.acked[-1][0]
                if w.in_flight is not None:
                    retried = await stub.BatchAppend(batch(w.session, w.in_flight), timeout=5)
                    w.acked.append((w.in_flight, list(retried.sequences)))
                    last = w.in_flight
                history = await stub.GetHistory(
                    memory_pb2.GetHistoryRequest(session_id=w.session, limit=100_000), timeout=5)
                stored = [m.content for m in history.messages]
                assert stored == [text for i in range(1, last + 1) for text in (f"q{i}", f"a{i}")]
                for i, sequences in w.acked:  # the sequences acknowledged are where they are
                    assert sequences == [2 * i - 1, 2 * i]
                assert history.last_sequence == 2 * last
    finally:
        codes = await mesh.stop()
    assert codes == {"memory": 0}, codes


@pytest.mark.system
async def test_sqlite_memory_service_survives_sigkill(tmp_path):
    await crash_and_check(MeshProcesses(memory_env(tmp_path), services=("memory",)))


@pytest.mark.system
async def test_redis_memory_service_and_redis_survive_sigkill(tmp_path, make_redis):
    # The default durability (redis_durability=always) needs this; the store checks it at start.
    redis = make_redis("--appendonly", "yes", "--appendfsync", "always")
    env = memory_env(tmp_path, CLAWMESH_MEMORY__BACKEND="redis", CLAWMESH_MEMORY__REDIS_URL=redis.url)
    await crash_and_check(MeshProcesses(env, services=("memory",)), redis.kill, redis.restart)
