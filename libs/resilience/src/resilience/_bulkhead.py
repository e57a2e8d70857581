"""Bulkhead: a per-target limit on calls in flight; over it, fail fast."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import PolicyError

DEFAULT_MAX_CONCURRENT_CALLS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadOptions:
    """How many calls to one target may be in flight at once."""

    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent_calls <= 100_000:
            raise PolicyError(
                "maxConcurrentCalls", "an integer in [1, 100000]", self.max_concurrent_calls
            )


class Bulkhead:
    """A counter, not a semaphore: nobody ever waits for a slot.

    The free slots are a deque of placeholders: `deque.pop()` and `deque.append()` are
    atomic (documented as thread-safe), so taking and giving back a slot needs no lock of
    our own, and more than `limit` calls can never be admitted at once.
    """

    __slots__ = ("_free", "limit", "release", "take")

    def __init__(self, options: BulkheadOptions) -> None:
        self.limit = options.max_concurrent_calls
        self._free: deque[None] = deque([None] * self.limit)
        # Take a slot (IndexError when none is free) and give it back: C-level callables,
        # so the per-call path runs no Python frame of the bulkhead's.
        self.take: Callable[[], object] = self._free.pop
        self.release: Callable[[], None] = functools.partial(self._free.append, None)

    @property
    def in_flight(self) -> int:
        return self.limit - len(self._free)

    def try_acquire(self) -> bool:
        try:
            self._free.pop()
        except IndexError:
            return False
        return True
