"""The inbound deadline, carried in a contextvar from server handler to outbound calls.

The value is an absolute `clock.monotonic()` time, or None when the inbound call had none.
grpc servers report "no deadline" as a huge `time_remaining()` (~9.2e18 s, grpc#9423): passed on
as a timeout it fails the outbound call at once (grpc#26236), so anything beyond
`NO_DEADLINE_THRESHOLD` means none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from ._clock import SYSTEM_CLOCK, Clock

NO_DEADLINE_THRESHOLD = 1e8  # seconds (~3 years): beyond it, time_remaining() means "none"

_inbound_deadline: ContextVar[float | None] = ContextVar(
    "resilience_inbound_deadline", default=None
)

get_inbound_deadline = _inbound_deadline.get


def deadline_from_remaining(remaining: float | None, clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Turn a server context's `time_remaining()` into an absolute deadline, or None."""
    if remaining is None or remaining > NO_DEADLINE_THRESHOLD:
        return None
    return clock.monotonic() + max(0.0, remaining)


@contextlib.contextmanager
def deadline_scope(seconds: float | None, clock: Clock = SYSTEM_CLOCK) -> Iterator[None]:
    """Cap every outbound call made inside the block, as an inbound deadline would.

    Nested scopes only ever shorten the deadline.
    """
    deadline = deadline_from_remaining(seconds, clock)
    outer = _inbound_deadline.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
    token = _inbound_deadline.set(deadline)
    try:
        yield
    finally:
        _inbound_deadline.reset(token)


def remaining_time(clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Seconds left of the inbound deadline, or None when there is none."""
    deadline = _inbound_deadline.get()
    return None if deadline is None else deadline - clock.monotonic()
