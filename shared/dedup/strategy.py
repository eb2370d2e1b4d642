"""Strategies: one claim mechanism, configured by two orthogonal parts.

A strategy is a small object the :class:`~clawmesh.shared.dedup.core.Deduplicator` asks
two questions on every claim:

* ``sliding`` — is a stored entry's TTL refreshed each time a copy is seen?
* ``probably_new(hkey)`` — may the pre-filter answer "definitely not seen" so the
  claim skips the read of the exact store (a "maybe" always reads it)?

    exact()            hash + TTL, the TTL runs from the first copy (completion for replies)
    sliding_window()   hash + TTL, refreshed on every copy seen
    bloom(...)         Bloom pre-filter in front of the exact store, fixed TTL
    combined(...)      Bloom pre-filter + exact store + sliding window

The Bloom pre-filter can only make a claim skip the *read*: the write is still an atomic
insert-if-absent in the exact store, so neither a false positive ("maybe" for a new key:
one extra read) nor a filter local to one replica (a key another replica saw is "not
present" here) can make a message a false duplicate or a false unique.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rbloom import Bloom

__all__ = ["BloomPrefilter", "Strategy", "bloom", "combined", "exact", "sliding_window", "make_strategy"]


def _hkey_hash(hkey: str) -> int:
    """rbloom's hash: the 128-bit digest already in the hashed key, as a signed int.

    Deterministic across processes (Python's ``hash`` of a str is salted per process),
    and no second hash of the key.
    """
    return int(hkey[-32:], 16) - (1 << 127)


class BloomPrefilter:
    """A memory-bounded Bloom filter of hashed keys, in two rotating generations.

    A Bloom filter cannot forget, so it is bounded by generations: each holds up to
    ``capacity`` keys at ``fp_rate / 2``; when the current one is full it becomes the
    previous one and the old previous one is dropped. A lookup asks both, so the
    false-positive rate stays ≤ ``fp_rate`` (union bound) and the memory is two filters,
    whatever the traffic. A dropped generation only turns old keys from "maybe" into
    "not present": their claims then go straight to the atomic insert, which still finds
    any entry the exact store holds.
    """

    def __init__(self, capacity: int = 100_000, fp_rate: float = 0.01) -> None:
        if capacity <= 0 or not 0.0 < fp_rate < 1.0:
            raise ValueError("capacity must be > 0 and 0 < fp_rate < 1")
        self.capacity = capacity
        self.fp_rate = fp_rate
        self._current = self._new()
        self._previous: Bloom | None = None
        self._count = 0

    def _new(self) -> Bloom:
        return Bloom(self.capacity, self.fp_rate / 2, _hkey_hash)

    def add(self, hkey: str) -> None:
        if hkey in self._current:
            return
        if self._count >= self.capacity:
            self._previous, self._current, self._count = self._current, self._new(), 0
        self._current.add(hkey)
        self._count += 1

    def __contains__(self, hkey: str) -> bool:
        return hkey in self._current or (self._previous is not None and hkey in self._previous)

    @property
    def size_in_bits(self) -> int:
        return 2 * self._current.size_in_bits


@dataclass
class Strategy:
    """What varies between the strategies; the claim mechanism itself does not."""

    name: str = "exact"
    sliding: bool = False
    prefilter: BloomPrefilter | None = field(default=None, repr=False)

    def probably_new(self, hkey: str) -> bool:
        """True only if the pre-filter is sure the key was not seen by this process."""
        return self.prefilter is not None and hkey not in self.prefilter

    def remember(self, hkey: str) -> None:
        if self.prefilter is not None:
            self.prefilter.add(hkey)


def exact() -> Strategy:
    return Strategy("exact")


def sliding_window() -> Strategy:
    return Strategy("sliding", sliding=True)


def bloom(capacity: int = 100_000, fp_rate: float = 0.01) -> Strategy:
    return Strategy("bloom", prefilter=BloomPrefilter(capacity, fp_rate))


def combined(capacity: int = 100_000, fp_rate: float = 0.01) -> Strategy:
    return Strategy("combined", sliding=True, prefilter=BloomPrefilter(capacity, fp_rate))


def make_strategy(name: str, *, bloom_capacity: int = 100_000, bloom_fp_rate: float = 0.01) -> Strategy:
    """A strategy by its settings name: exact, sliding, bloom or combined."""
    if name == "exact":
        return exact()
    if name in ("sliding", "sliding_window"):
        return sliding_window()
    if name == "bloom":
        return bloom(bloom_capacity, bloom_fp_rate)
    if name == "combined":
        return combined(bloom_capacity, bloom_fp_rate)
    raise ValueError(f"unknown dedup strategy {name!r} (exact, sliding, bloom, combined)")
