"""Events the pipeline emits; listeners (metrics, traces, logs) subscribe to them.

A listener is any callable taking one event; dispatch with `match` or on `type(event)`.
Events are NamedTuples: immutable and cheap to build on the hot path (a frozen dataclass
costs twice as much here). Every event carries its `CallSite` (target and method, created
once per method), so a listener can cache whatever it binds per site. Attempts are numbered
from 1, which is what a tracing listener needs to tell attempt spans apart.

The common case, a call whose first attempt succeeds, is two events. A listener may also
define `call_succeeded(site, start, duration, timeout)` (see `SuccessListener`); the pipeline
then calls that instead of building the pair, which saves most of a listener's per-call cost.
It is looked up once, when the pipeline is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeAlias


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class CallSite:
    """One (target, method) pair; identity-hashed, so it is a cheap cache key."""

    target: str
    method: str  # "/package.Service/Method"
    service: str
    name: str  # "Method"


class AttemptEnded(NamedTuple):
    """One attempt finished (sent and answered, or failed locally after being sent)."""

    site: CallSite
    attempt: int
    code: str
    start: float  # clock.monotonic() when the attempt was sent
    duration: float
    timeout: float  # the attempt's own timeout


class RetryScheduled(NamedTuple):
    """Attempt `attempt` failed with `code`; the next one is sent after `delay` seconds."""

    site: CallSite
    attempt: int
    code: str
    delay: float
    pushback: bool  # the delay came from the server's grpc-retry-pushback-ms


class RetryBudgetExhausted(NamedTuple):
    """A retry was allowed by the policy but the target's retry budget had no tokens."""

    site: CallSite
    attempt: int
    code: str
    tokens: float


class BreakerStateChanged(NamedTuple):
    """A circuit breaker moved between closed, open and half-open."""

    target: str
    method: str  # "" for a target-wide breaker
    old: str
    new: str


class BreakerRejected(NamedTuple):
    """The breaker failed an attempt fast, without sending it."""

    site: CallSite
    attempt: int
    state: str
    probe_in: float | None


class BulkheadRejected(NamedTuple):
    """The target already had `limit` calls in flight."""

    site: CallSite
    limit: int


class DeadlineExceededLocally(NamedTuple):
    """No time left for (another) attempt: failed with DEADLINE_EXCEEDED without sending it."""

    site: CallSite
    attempt: int
    remaining: float


class CallEnded(NamedTuple):
    """The logical call finished; `outcome` is a low-cardinality label value."""

    site: CallSite
    code: str
    attempts: int
    duration: float
    outcome: str


# Values of CallEnded.outcome.
OUTCOME_SUCCESS = "success"
OUTCOME_ERROR = "error"  # the server's answer, after any retries
OUTCOME_BREAKER_OPEN = "breaker_open"
OUTCOME_BULKHEAD_FULL = "bulkhead_full"
OUTCOME_DEADLINE = "deadline_exceeded_locally"

Event: TypeAlias = (
    AttemptEnded
    | RetryScheduled
    | RetryBudgetExhausted
    | BreakerStateChanged
    | BreakerRejected
    | BulkheadRejected
    | DeadlineExceededLocally
    | CallEnded
)
Listener: TypeAlias = Callable[[Event], None]
# call_succeeded(site, start, duration, timeout), as in `SuccessListener`.
SuccessNotifier: TypeAlias = Callable[[CallSite, float, float, float], None]


class SuccessListener(Protocol):
    """A listener that also takes a first-attempt success as one call (optional shortcut)."""

    def __call__(self, event: Event) -> None: ...

    def call_succeeded(self, site: CallSite, start: float, duration: float, timeout: float) -> None:
        """Stands for `AttemptEnded(site, 1, OK, start, duration, timeout)` followed by
        `CallEnded(site, OK, 1, duration, OUTCOME_SUCCESS)`: handle it exactly as that pair."""
        ...


def success_notifier(listener: Listener) -> SuccessNotifier | None:
    """The listener's `call_succeeded`, or None when it only takes events."""
    notifier = getattr(listener, "call_succeeded", None)
    return notifier if callable(notifier) else None


class RecordingListener:
    """Keeps every event in a list (tests, debugging)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]
