"""The claim contract, on both backends (Redis: the real server of `redis_url`)."""

from __future__ import annotations

import asyncio

import pytest

from clawmesh.shared.dedup import Claim, InFlightTimeout, make_strategy
from tests.shared.dedup.dedup_helpers import until, waiting

STRATEGIES = ["exact", "sliding", "bloom", "combined"]


@pytest.mark.parametrize("name", STRATEGIES)
async def test_first_owns_then_copies_get_the_reply(make_dedup, name):
    dedup = make_dedup(strategy=make_strategy(name, bloom_capacity=1000))
    assert await dedup.claim("t:c:s:1", 60) == Claim(owner=True)
    assert await dedup.complete("t:c:s:1", b"reply-1") is True
    for _ in range(3):
        assert await dedup.claim("t:c:s:1", 60) == Claim(owner=False, reply=b"reply-1", replayed=True)
    assert await dedup.claim("t:c:s:2", 60) == Claim(owner=True)  # another key is unique
    stats = await dedup.stats()
    assert (stats.unique_added, stats.duplicates_found, stats.replays, stats.coalesced) == (2, 3, 3, 0)
    assert stats.current_entries == 2


async def test_empty_reply_is_replayed_as_empty(make_dedup):
    dedup = make_dedup()
    await dedup.claim("k", 60)
    await dedup.complete("k", b"")
    assert await dedup.claim("k", 60) == Claim(owner=False, reply=b"", replayed=True)


async def test_release_lets_the_next_copy_try_again(make_dedup):
    dedup = make_dedup()
    assert (await dedup.claim("k", 60)).owner
    assert await dedup.release("k") is True
    assert (await dedup.stats()).current_entries == 0
    assert await dedup.claim("k", 60) == Claim(owner=True)


async def test_complete_or_release_without_a_claim_is_an_error(make_dedup):
    dedup = make_dedup()
    with pytest.raises(KeyError):
        await dedup.complete("never-claimed", b"x")
    await dedup.claim("k", 60)
    await dedup.complete("k", b"x")
    with pytest.raises(KeyError):
        await dedup.release("k")  # already completed: the claim is spent


async def test_copy_in_flight_waits_and_gets_the_original_reply(make_dedup):
    dedup = make_dedup()
    assert (await dedup.claim("k", 60)).owner
    copy = asyncio.create_task(dedup.claim("k", 60, wait_timeout_s=5))
    await until(waiting(dedup))
    assert not copy.done()
    await dedup.complete("k", b"the reply")
    assert await copy == Claim(owner=False, reply=b"the reply", coalesced=True)
    stats = await dedup.stats()
    assert (stats.unique_added, stats.coalesced, stats.replays) == (1, 1, 0)


async def test_release_makes_exactly_one_waiter_the_owner(make_dedup):
    dedup = make_dedup()
    assert (await dedup.claim("k", 60)).owner
    copies = [asyncio.create_task(dedup.claim("k", 60, wait_timeout_s=5)) for _ in range(5)]
    await until(waiting(dedup, 5))
    await dedup.release("k")
    await until(lambda: _stat(dedup, "unique_added", 2))
    owners = [c for c in copies if c.done() and c.result().owner]
    assert len(owners) == 1
    assert sum(c.done() for c in copies) == 1  # the others still wait for the new owner
    await dedup.complete("k", b"second try")
    results = await asyncio.gather(*copies)
    assert sorted(r.owner for r in results) == [False, False, False, False, True]
    assert all(r.reply == b"second try" and r.coalesced for r in results if not r.owner)


async def test_concurrent_copies_have_exactly_one_owner(make_dedup):
    instances = [make_dedup(), make_dedup()]
    claims = [asyncio.create_task(instances[i % 2].claim("k", 60, wait_timeout_s=5)) for i in range(10)]
    await until(lambda: _total_claims(instances, claims))
    owners = [i for i, c in enumerate(claims) if c.done() and c.result().owner]
    assert len(owners) == 1
    await instances[owners[0] % 2].complete("k", b"only once")
    results = await asyncio.gather(*claims)
    assert [r.reply for r in results if not r.owner] == [b"only once"] * 9


async def test_a_copy_never_waits_past_its_timeout(make_dedup):
    dedup = make_dedup(op_timeout_s=0.05)
    await dedup.claim("k", 60)
    loop = asyncio.get_running_loop()
    for wait_s in (0.0, 0.03, 0.12):
        started = loop.time()
        with pytest.raises(InFlightTimeout):
            await dedup.claim("k", 60, wait_timeout_s=wait_s)
        elapsed = loop.time() - started
        assert elapsed < wait_s + 0.05 + 0.1  # one op timeout at most, plus scheduling slack
    assert (await dedup.stats()).in_flight_timeouts == 3
    await dedup.complete("k", b"late")  # the timed-out copies did not take the key
    assert (await dedup.claim("k", 60)).reply == b"late"


async def _stat(dedup, name: str, value: int) -> bool:
    return getattr(await dedup.stats(), name) >= value


async def _total_claims(instances, claims) -> bool:
    """All claims have either won or found the key in flight."""
    seen = 0
    for dedup in instances:
        stats = await dedup.stats()
        seen += stats.unique_added + stats.duplicates_found
    return seen >= len(claims)
