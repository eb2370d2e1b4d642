"""Exact TTL behaviour on the in-process backend, with a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawmesh.shared.dedup import Claim, Deduplicator, InFlightTimeout, MemoryBackend, sliding_window
from tests.shared.dedup.dedup_helpers import FakeClock, until, waiting


@pytest.fixture
def clock():
    return FakeClock()


async def test_reply_is_replayed_until_the_ttl_then_the_key_is_new(clock):
    dedup = Deduplicator(clock=clock)
    assert (await dedup.claim("k", 10)).owner
    clock.advance(4)
    await dedup.complete("k", b"r")  # the TTL runs from completion: until t+4+10
    clock.advance(9.999)
    assert await dedup.claim("k", 10) == Claim(owner=False, reply=b"r", replayed=True)
    clock.advance(0.001)
    assert await dedup.claim("k", 10) == Claim(owner=True)
    stats = await dedup.stats()
    assert (stats.unique_added, stats.replays, stats.current_entries) == (2, 1, 1)


async def test_exact_ttl_is_not_refreshed_by_copies(clock):
    dedup = Deduplicator(clock=clock)
    await dedup.claim("k", 10)
    await dedup.complete("k", b"r")
    clock.advance(8)
    assert (await dedup.claim("k", 10)).replayed
    clock.advance(2)
    assert (await dedup.claim("k", 10)).owner


async def test_sliding_window_refreshes_the_ttl_on_each_copy(clock):
    dedup = Deduplicator(clock=clock, strategy=sliding_window())
    await dedup.claim("k", 10)
    await dedup.complete("k", b"r")
    for _ in range(5):  # a copy every 8 s keeps it alive far past the first 10 s
        clock.advance(8)
        assert (await dedup.claim("k", 10)).replayed
    clock.advance(9.999)
    assert (await dedup.claim("k", 10)).replayed
    clock.advance(10)
    assert (await dedup.claim("k", 10)).owner


async def test_entries_expire_and_leave_the_store(clock):
    dedup = Deduplicator(clock=clock)
    for i in range(100):
        await dedup.claim(f"k{i}", 5 if i % 2 else 50)
        await dedup.complete(f"k{i}", b"r")
    assert (await dedup.stats()).current_entries == 100
    clock.advance(5)
    assert (await dedup.stats()).current_entries == 50
    clock.advance(45)
    assert (await dedup.stats()).current_entries == 0


async def test_an_owner_that_never_finishes_loses_its_lease(clock):
    store = MemoryBackend(clock=clock)
    a, b = Deduplicator(store, lease_s=30), Deduplicator(store, lease_s=30)
    assert (await a.claim("k", 600)).owner
    clock.advance(29.9)
    with pytest.raises(InFlightTimeout):
        await b.claim("k", 600, wait_timeout_s=0)
    clock.advance(0.1)
    assert (await b.claim("k", 600)).owner  # the lease ran out: this copy owns it now
    assert await a.complete("k", b"stale") is False  # the first owner can no longer store
    assert await b.complete("k", b"fresh") is True
    assert (await a.claim("k", 600)).reply == b"fresh"


async def test_expired_lease_wakes_a_waiting_copy(clock):
    dedup = Deduplicator(clock=clock, lease_s=30)
    await dedup.claim("k", 600)
    dedup._owned.clear()  # the owner "crashed": it will never complete or release
    copy = asyncio.create_task(dedup.claim("k", 600, wait_timeout_s=5))
    await until(waiting(dedup))
    clock.advance(30)
    assert await copy == Claim(owner=True)


async def test_two_deduplicators_on_one_store_coalesce(clock):
    store = MemoryBackend(clock=clock)
    a, b = Deduplicator(store), Deduplicator(store)
    assert (await a.claim("k", 60)).owner
    copy = asyncio.create_task(b.claim("k", 60))
    await until(waiting(b))
    await a.complete("k", b"shared")
    assert await copy == Claim(owner=False, reply=b"shared", coalesced=True)


async def test_bad_arguments():
    with pytest.raises(ValueError):
        Deduplicator(failure_mode="sometimes")
    with pytest.raises(ValueError):
        await Deduplicator().claim("k", 0)


# -- property: the exact strategy never passes a copy within its TTL ------------------------

TTL = 10.0
steps = st.lists(st.tuples(st.integers(0, 3), st.floats(0, 2 * TTL, allow_nan=False)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_exact_never_passes_a_copy_within_its_ttl(steps):
    async def run() -> None:
        clock = FakeClock(0.0)
        dedup = Deduplicator(clock=clock)
        expires: dict[int, float] = {}  # the model: when each key's stored reply expires
        for key, dt in steps:
            clock.advance(dt)
            claim = await dedup.claim(str(key), TTL)
            if clock.now < expires.get(key, float("-inf")):
                assert claim == Claim(owner=False, reply=str(key).encode(), replayed=True)
            else:
                assert claim.owner
                await dedup.complete(str(key), str(key).encode())
                expires[key] = clock.now + TTL

    asyncio.run(run())
