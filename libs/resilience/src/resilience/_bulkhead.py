"""Bulkhead: a per-target limit on calls in flight; over it, fail fast."""

from __future__ import annotations

import threading
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
    """A counter, not a semaphore: nobody ever waits for a slot."""

    __slots__ = ("_in_flight", "_lock", "limit")

    def __init__(self, options: BulkheadOptions) -> None:
        self.limit = options.max_concurrent_calls
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
