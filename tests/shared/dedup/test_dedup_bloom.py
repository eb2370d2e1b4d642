"""The Bloom pre-filter: bounded memory, measured false-positive rate, no false duplicates."""

from __future__ import annotations

import random

import pytest

from clawmesh.shared.dedup import BloomPrefilter, Claim, Deduplicator, MemoryBackend, bloom, combined


def _keys(rng: random.Random, n: int, tag: str) -> list[str]:
    return [Deduplicator.hash_key(f"{tag}:{rng.getrandbits(64):016x}") for _ in range(n)]


@pytest.mark.parametrize("fill", [10_000, 20_000])  # one generation full; both full
def test_false_positive_rate_stays_within_the_configured_bound(fill):
    rng = random.Random(20240601)
    prefilter = BloomPrefilter(capacity=10_000, fp_rate=0.01)
    members = _keys(rng, fill, "in")
    for hkey in members:
        prefilter.add(hkey)
    assert all(hkey in prefilter for hkey in members[-10_000:])  # no false negatives
    probes = _keys(rng, 20_000, "out")
    rate = sum(hkey in prefilter for hkey in probes) / len(probes)
    # Expected ≤ 0.01 (≈0.005 per generation). 20k probes: σ ≈ 0.0007 at 1 %, so the
    # 30 % margin is > 4σ; the seed and the hash are fixed, so the run is deterministic.
    assert rate <= 0.01 * 1.3, rate


def test_memory_is_bounded_whatever_the_traffic():
    prefilter = BloomPrefilter(capacity=1_000, fp_rate=0.01)
    size = prefilter.size_in_bits
    for hkey in _keys(random.Random(1), 50_000, "k"):
        prefilter.add(hkey)
    assert prefilter.size_in_bits == size
    assert size < 1_000 * 2 * 16  # two generations of ~11 bits per key at 0.5 %


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def claim(self, *args):
        self.calls.append("claim")
        return await super().claim(*args)

    async def insert_new(self, *args):
        self.calls.append("insert_new")
        return await super().insert_new(*args)


async def test_not_present_skips_the_lookup_maybe_goes_to_the_store():
    backend = CountingBackend()
    dedup = Deduplicator(backend, strategy=bloom(capacity=1000, fp_rate=0.01))
    assert (await dedup.claim("k", 60)).owner
    await dedup.complete("k", b"r")
    assert (await dedup.claim("k", 60)).replayed
    assert backend.calls == ["insert_new", "claim"]


@pytest.mark.parametrize("make", [bloom, combined])
async def test_a_saturated_filter_never_makes_a_false_duplicate(make):
    # A tiny filter at a 50 % false-positive rate answers "maybe" to most new keys:
    # every one of those must still be unique, because the exact store decides.
    dedup = Deduplicator(MemoryBackend(), strategy=make(capacity=8, fp_rate=0.5))
    for i in range(2000):
        assert await dedup.claim(f"key-{i}", 60) == Claim(owner=True)
        await dedup.complete(f"key-{i}", b"r")
    stats = await dedup.stats()
    assert (stats.unique_added, stats.duplicates_found) == (2000, 0)
