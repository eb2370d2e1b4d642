"""An acknowledged append survives kill -9 of the process that made it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from clawmesh.services.memory.store import MemoryStore, Message

REPO = Path(__file__).resolve().parents[3]
ACKED = 25

# Appends pairs of messages forever, printing each acknowledged result; killed by the test.
CHILD = """
import asyncio, sys
from clawmesh.services.memory.store import MemoryStore, Message

async def main():
    store = await MemoryStore.open(sys.argv[1], 100_000)
    i = 0
    while True:
        i += 1
        batch = [Message(role=2, content=f"q{i}"), Message(role=3, content=f"a{i}")]
        result = await store.append("t", "s", batch, idempotency_key=f"k{i}")
        print(i, *result.sequences, flush=True)

asyncio.run(main())
"""


def test_acknowledged_appends_survive_sigkill(tmp_path):
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
        store = await MemoryStore.open(tmp_path, 100_000)
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
