"""One instance per process, made on first use.

For Prometheus metrics: the default registry refuses a metric registered twice, while a
process may build a service's parts more than once (tests start several servers in one).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def process_wide(make: Callable[[], T]) -> Callable[[], T]:
    """A getter that calls ``make`` once, on its first call, and returns that every time;
    concurrent first calls wait for the one that makes it."""
    lock = threading.Lock()
    made: list[T] = []

    @functools.wraps(make)
    def get() -> T:
        with lock:
            if not made:
                made.append(make())
            return made[0]

    return get
