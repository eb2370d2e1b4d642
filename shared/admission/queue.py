"""A bounded wait queue ordered by priority class, FIFO within a class.

Plain data structure (no asyncio): the admission controller and the worker pool
keep their waiters here. Every operation is O(1) in the number of waiters (one
insertion-ordered dict per class; five classes).

    q = PriorityWaitQueue(capacity=2)
    q.push(a)              # a.priority == Priority.LOW
    q.push(b)              # b.priority == Priority.HIGH
    q.admission(Priority.NORMAL)   # -> ("evict", a): full, LOW is the lowest waiting
    q.pop()                # -> b (HIGH before LOW)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Literal, Protocol, TypeVar

from clawmesh.shared.admission.base import CLASSES, Priority


class HasPriority(Protocol):
    @property
    def priority(self) -> Priority: ...


T = TypeVar("T", bound=HasPriority)


class PriorityWaitQueue(Generic[T]):
    """Waiters by class (CRITICAL first), oldest first within a class.

    ``capacity`` bounds the number of waiters (0: no waiting at all). When full,
    :meth:`admission` tells the caller what to do with a newcomer: the newest
    waiter of the lowest class present is evicted if that class is strictly lower
    than the newcomer's; otherwise the newcomer is refused. So load is shed from
    the bottom (background → low → normal → high), and a waiter of a class is
    never evicted while a lower class waits.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        # dict keyed by id(item): insertion-ordered, O(1) removal from anywhere.
        self._classes: dict[Priority, dict[int, T]] = {p: {} for p in CLASSES}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __contains__(self, item: object) -> bool:
        waiters = self._classes.get(getattr(item, "priority", None))  # type: ignore[arg-type]
        return waiters is not None and id(item) in waiters

    def __iter__(self) -> Iterator[T]:
        """Serving order: highest class first, FIFO within a class."""
        for priority in CLASSES:
            yield from list(self._classes[priority].values())

    @property
    def full(self) -> bool:
        return self._size >= self.capacity

    def count(self, priority: Priority) -> int:
        return len(self._classes[priority])

    def ahead_of(self, priority: Priority) -> int:
        """Waiters a newcomer of ``priority`` would queue behind (its class and higher)."""
        return sum(len(self._classes[p]) for p in CLASSES if p <= priority)

    def counts(self) -> dict[Priority, int]:
        return {p: len(w) for p, w in self._classes.items()}

    def lowest_class(self) -> Priority | None:
        for priority in reversed(CLASSES):
            if self._classes[priority]:
                return priority
        return None

    def admission(self, priority: Priority) -> tuple[Literal["enqueue", "evict", "refuse"], T | None]:
        """What to do with a newcomer of ``priority`` (does not change the queue)."""
        if not self.full:
            return ("enqueue", None)
        lowest = self.lowest_class()
        if lowest is not None and lowest > priority:
            victim = next(reversed(self._classes[lowest].values()))
            return ("evict", victim)
        return ("refuse", None)

    def push(self, item: T) -> None:
        """Append ``item`` to its class. The caller checks :meth:`admission` first."""
        if self.full:
            raise OverflowError("wait queue is full")
        self._classes[item.priority][id(item)] = item
        self._size += 1

    def peek(self) -> T | None:
        for priority in CLASSES:
            waiters = self._classes[priority]
            if waiters:
                return next(iter(waiters.values()))
        return None

    def pop(self) -> T:
        """The next waiter to serve (highest class, oldest)."""
        for priority in CLASSES:
            waiters = self._classes[priority]
            if waiters:
                key = next(iter(waiters))
                self._size -= 1
                return waiters.pop(key)
        raise IndexError("pop from an empty wait queue")

    def remove(self, item: T) -> bool:
        """Take ``item`` out wherever it is; False if it was not waiting."""
        if self._classes[item.priority].pop(id(item), None) is None:
            return False
        self._size -= 1
        return True
