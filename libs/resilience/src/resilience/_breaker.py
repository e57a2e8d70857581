"""Circuit breaker on pybreaker's state machine, used as "ask before, record after".

pybreaker's `CircuitBreaker.call()` holds one lock for the whole wrapped call, which serialises
every thread (pybreaker#3, pybreaker#55). So the RPC is never wrapped: `Breaker` keeps its own
lock around `acquire()` and `record()`, and `record()` hands pybreaker a call that has already
ended (a function that returns, or one that raises `_Failure`) through `call()`, its public
API. pybreaker keeps the states, the consecutive-failure count, `success_threshold` and the
transitions, reported through a `CircuitBreakerListener`; this module adds what a wrapped call
cannot give:

* `acquire()` asks before an attempt: closed passes, open fails fast until the open interval has
  passed on the injected clock (pybreaker times it on the wall clock, which tests cannot move),
  half-open lets at most `half_open_max_calls` probes through;
* the open interval starts at `reset_timeout` and doubles each time a probe fails, up to
  `max_reset_timeout` (resilience4j's exponential `waitIntervalFunctionInOpenState`): a
  backend back after a sub-second restart is probed, and readmitted, within `reset_timeout`,
  while one that stays down is probed ever less often. Closing starts it over;
* in the closed state a `TripCondition` decides when to open (pybreaker's own `fail_max` is
  out of reach): `ConsecutiveFailures(5) | FailureRate(...)`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ._clock import Clock
from ._codes import UNAVAILABLE
from ._errors import LocalFailure, PolicyError

DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_RESET_TIMEOUT = 5.0
DEFAULT_HALF_OPEN_MAX_CALLS = 1
DEFAULT_SUCCESS_THRESHOLD = 1
_WINDOW_BUCKETS = 10


@contextlib.contextmanager
def _redis_hidden() -> Iterator[None]:
    """Imports within take their "redis is not installed" branch, unless redis is loaded already.

    pybreaker imports redis-py at import time for `CircuitRedisStorage`, which this module never
    uses, and redis-py 8 loads OpenTelemetry's metrics SDK in turn: ~9 MiB of RSS in every
    process with no other use for Redis (payment v1 and v2). The entry is removed on the way
    out, so a later `import redis` loads it as usual; a process that has redis loaded already
    (order, inventory) pays nothing more either way.
    """
    if "redis" in sys.modules:
        yield
        return
    sys.modules["redis"] = None  # type: ignore[assignment]  # how sys.modules says "not importable"
    try:
        yield
    finally:
        del sys.modules["redis"]


with _redis_hidden():
    import pybreaker

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN


class TripTracker(Protocol):
    """Per-breaker state of a trip condition (called under the breaker's lock)."""

    @property
    def record_success(self) -> Callable[[float], None] | None:
        """Accounts a success at `now`; None when successes do not matter (read once)."""
        ...

    def record_failure(self, now: float, consecutive_failures: int) -> bool:
        """Account one failure; True when the breaker should open."""
        ...

    def reset(self) -> None: ...


class TripCondition:
    """When a closed breaker opens; `a | b` opens when either says so."""

    __slots__ = ()

    def tracker(self) -> TripTracker:
        raise NotImplementedError

    def __or__(self, other: TripCondition) -> TripCondition:
        return AnyOf(first=self, second=other)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsecutiveFailures(TripCondition):
    """pybreaker's own rule: `threshold` failures in a row (its `fail_counter`)."""

    threshold: int = DEFAULT_CONSECUTIVE_FAILURES

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= 10_000:
            raise PolicyError("consecutiveFailures", "an integer in [1, 10000]", self.threshold)

    def tracker(self) -> TripTracker:
        return _ConsecutiveTracker(self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRate(TripCondition):
    """Resilience4j/Polly rule: failures / calls >= threshold over a sliding time window,
    once at least `minimum_calls` calls were seen in it."""

    threshold: float
    window: float
    minimum_calls: int

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise PolicyError("failureRate.threshold", "in (0, 1]", self.threshold)
        if not 0.01 <= self.window <= 3600:
            raise PolicyError("failureRate.window", "in [0.01, 3600] seconds", self.window)
        if not 1 <= self.minimum_calls <= 1_000_000:
            raise PolicyError(
                "failureRate.minimumCalls", "an integer in [1, 1000000]", self.minimum_calls
            )

    def tracker(self) -> TripTracker:
        return _RateTracker(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnyOf(TripCondition):
    """Trips when either condition trips."""

    first: TripCondition
    second: TripCondition

    def tracker(self) -> TripTracker:
        return _AnyTracker(self.first.tracker(), self.second.tracker())


class _ConsecutiveTracker:
    __slots__ = ("record_success", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        # pybreaker resets its own counter on success.
        self.record_success: Callable[[float], None] | None = None

    def record_failure(self, now: float, consecutive_failures: int) -> bool:
        return consecutive_failures >= self.threshold

    def reset(self) -> None:
        pass


class _RateTracker:
    """A ring of buckets, each `window / 10` wide, holding (calls, failures).

    The newest bucket's time range is kept: nearly every outcome falls into it, and finding
    a bucket from scratch (a float floor division) costs more than the rest of a success.
    """

    __slots__ = (
        "_calls",
        "_epochs",
        "_failures",
        "_from",
        "_min",
        "_newest",
        "_newest_epoch",
        "_threshold",
        "_until",
        "_width",
        "record_success",
    )

    def __init__(self, rate: FailureRate) -> None:
        self._width = rate.window / _WINDOW_BUCKETS
        self._threshold = rate.threshold
        self._min = rate.minimum_calls
        self._calls = [0] * _WINDOW_BUCKETS
        self._failures = [0] * _WINDOW_BUCKETS
        self._epochs: list[int] = []
        self._newest: int = 0
        self._newest_epoch: int = -1
        self._from: float = math.inf
        self._until: float = -math.inf
        self.reset()
        self.record_success: Callable[[float], None] | None = self._succeeded

    def _succeeded(self, now: float) -> None:
        i = self._newest if self._from <= now < self._until else self._bucket(now)
        self._calls[i] += 1

    def _bucket(self, now: float) -> int:
        """The index of `now`'s bucket, emptied first if it held an older epoch."""
        if self._from <= now < self._until:
            return self._newest
        epoch = int(now // self._width)
        i = epoch % _WINDOW_BUCKETS
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._calls[i] = 0
            self._failures[i] = 0
        if epoch > self._newest_epoch:
            self._newest, self._newest_epoch = i, epoch
            self._from, self._until = epoch * self._width, (epoch + 1) * self._width
        return i

    def record_failure(self, now: float, consecutive_failures: int) -> bool:
        i = self._bucket(now)
        self._calls[i] += 1
        self._failures[i] += 1
        oldest = self._epochs[i] - _WINDOW_BUCKETS + 1
        calls = failures = 0
        for j in range(_WINDOW_BUCKETS):
            if self._epochs[j] >= oldest:
                calls += self._calls[j]
                failures += self._failures[j]
        return calls >= self._min and failures >= self._threshold * calls

    def reset(self) -> None:
        self._epochs = [-1] * _WINDOW_BUCKETS
        self._newest, self._newest_epoch = 0, -1
        self._from, self._until = math.inf, -math.inf  # no newest bucket yet


class _AnyTracker:
    __slots__ = ("_a", "_b", "_on_success", "record_success")

    def __init__(self, a: TripTracker, b: TripTracker) -> None:
        self._a, self._b = a, b
        # Only trackers that count successes see them; a single one is called directly.
        self._on_success = tuple(t.record_success for t in (a, b) if t.record_success is not None)
        self.record_success: Callable[[float], None] | None = (
            self._both_succeeded
            if len(self._on_success) == 2
            else next(iter(self._on_success), None)
        )

    def _both_succeeded(self, now: float) -> None:
        for record in self._on_success:
            record(now)

    def record_failure(self, now: float, consecutive_failures: int) -> bool:
        # Both must see every failure, so no short-circuit.
        a = self._a.record_failure(now, consecutive_failures)
        b = self._b.record_failure(now, consecutive_failures)
        return a or b

    def reset(self) -> None:
        self._a.reset()
        self._b.reset()


DEFAULT_TRIP = ConsecutiveFailures()


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOptions:
    """`circuitBreaker` in the policy file."""

    trip: TripCondition = DEFAULT_TRIP
    #: The first open interval; each failed probe doubles it, up to `max_reset_timeout`.
    reset_timeout: float = DEFAULT_RESET_TIMEOUT
    max_reset_timeout: float | None = None  # None: the same as reset_timeout (never grows)
    half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    per_method: bool = False

    def __post_init__(self) -> None:
        if not 0.001 <= self.reset_timeout <= 3600:
            raise PolicyError("resetTimeout", "in [0.001, 3600] seconds", self.reset_timeout)
        longest = self.max_reset_timeout
        if longest is not None and not self.reset_timeout <= longest <= 3600:
            raise PolicyError(
                "maxResetTimeout", f"in [resetTimeout={self.reset_timeout}, 3600] seconds", longest
            )
        if not 1 <= self.half_open_max_calls <= 1000:
            raise PolicyError(
                "halfOpenMaxCalls", "an integer in [1, 1000]", self.half_open_max_calls
            )
        if not 1 <= self.success_threshold <= 1000:
            raise PolicyError("successThreshold", "an integer in [1, 1000]", self.success_threshold)

    def open_interval(self, openings: int) -> float:
        """How long the breaker stays open after its `openings`-th opening in a row."""
        longest = self.reset_timeout if self.max_reset_timeout is None else self.max_reset_timeout
        return min(self.reset_timeout * 2.0 ** min(openings - 1, 32), longest)


class BreakerOpen(LocalFailure):
    """The breaker refused an attempt; `probe_in` is how long until it lets a probe through."""

    def __init__(self, target: str, state: str, probe_in: float | None) -> None:
        self.target = target
        self.probe_in = probe_in
        when = (
            f"will probe again in {probe_in:.3f}s"
            if probe_in is not None
            else "a probe is in flight; will probe again when it ends"
        )
        super().__init__(UNAVAILABLE, f"circuit breaker for {target} is {state}: {when}")


class _Failure(Exception):
    """An attempt that failed, as pybreaker's `call()` sees it: the recorded function raised."""


def _failed() -> None:
    raise _Failure  # a new exception each time: one raised again would grow its traceback


def _succeeded() -> None:
    pass


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change: Callable[[str, str], None]) -> None:
        self._on_change = on_change

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._on_change(old_state.name if old_state else CLOSED, new_state.name)


class Breaker:
    """One target's (or one method's) breaker; thread-safe, never holds a lock across an RPC."""

    __slots__ = (
        "_clock",
        "_half_open_max",
        "_lock",
        "_on_state_change",
        "_open_interval",
        "_opened_at",
        "_openings",
        "_probes",
        "_quiet",
        "_record_success",
        "_tracker",
        "circuit",
        "closed",
        "name",
        "reset_timeout",
        "state_name",
    )

    def __init__(
        self,
        options: BreakerOptions,
        *,
        name: str,
        clock: Clock,
        on_state_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        #: How long the breaker stays open this time (see `BreakerOptions.open_interval`).
        self.reset_timeout = options.reset_timeout
        self._open_interval = options.open_interval
        self._openings = 0  # openings since the breaker was last closed
        self._clock = clock
        self._tracker = options.trip.tracker()
        self._record_success = self._tracker.record_success
        self._half_open_max = options.half_open_max_calls
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._probes = 0
        self._opened_at = 0.0
        # Mirrors of pybreaker's state, read without the lock by callers and by the happy path.
        self.state_name = CLOSED
        self.closed = True  # `acquire()` would return False
        # Closed with no failure counted: a success only feeds the trip window. Written under
        # the lock by every state change and recorded outcome.
        self._quiet = True
        self.circuit = pybreaker.CircuitBreaker(
            fail_max=sys.maxsize,  # never trips by itself: the trip condition decides
            reset_timeout=options.reset_timeout,  # unused: `acquire()` times the open state
            success_threshold=options.success_threshold,
            listeners=[_StateListener(self._entered)],
            name=name,
            throw_new_error_on_trip=False,
        )

    @property
    def fail_counter(self) -> int:
        """Consecutive failures counted by pybreaker."""
        return int(self.circuit.fail_counter)

    def probe_in(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None unless open."""
        if self.state_name != OPEN:
            return None
        return max(0.0, self._opened_at + self.reset_timeout - self._clock.monotonic())

    def acquire(self) -> bool:
        """Ask before an attempt: True for a half-open probe, False for a normal call.

        Raises BreakerOpen when the attempt must not be sent.
        """
        if self.closed:  # unlocked read: the happy path takes no lock
            return False
        with self._lock:
            state = self.state_name
            if state == CLOSED:
                return False
            if state == OPEN:
                probe_in = self._opened_at + self.reset_timeout - self._clock.monotonic()
                if probe_in > 0:
                    raise BreakerOpen(self.name, OPEN, probe_in)
                self.circuit.half_open()
            if self._probes >= self._half_open_max:
                raise BreakerOpen(self.name, HALF_OPEN, None)
            self._probes += 1
            return True

    def record(self, probe: bool, failed: bool | None, now: float | None = None) -> None:
        """Record after an attempt: failed=None means no verdict (e.g. cancelled by the caller).

        `now` is the caller's `clock.monotonic()` reading, if it has one (saves a clock read).
        """
        if self._quiet and failed is False and not probe:
            # Happy path: pybreaker would reset a zero count and notify nobody, so only the
            # trip tracker needs the success, and no lock is taken if it does not count them.
            record_success = self._record_success
            if record_success is None:
                return
            if now is None:
                now = self._clock.monotonic()
            # acquire/release rather than `with`: half the instructions, on every call.
            lock = self._lock
            lock.acquire()
            try:
                if self._quiet:
                    record_success(now)
                    return
            finally:
                lock.release()
            # A failure was recorded meanwhile: account this success in full, below.
        with self._lock:
            if probe:
                self._probes -= 1
            state = self.state_name
            # A call admitted while closed that ends after the breaker opened says nothing
            # about the probes; only probes decide a half-open breaker.
            if failed is None or state == OPEN or (state == HALF_OPEN and not probe):
                return
            if failed:
                with contextlib.suppress(_Failure):
                    self.circuit.call(_failed)  # counts it; a half-open breaker reopens
                if state == CLOSED:
                    failures = self.circuit.fail_counter
                    if self._tracker.record_failure(self._clock.monotonic(), failures):
                        self.circuit.open()
            else:
                self.circuit.call(_succeeded)  # resets the count; half-open: may close
                if state == CLOSED and self._record_success is not None:
                    self._record_success(self._clock.monotonic() if now is None else now)
            self._quiet = self.closed and self.circuit.fail_counter == 0

    def _entered(self, old: str, new: str) -> None:
        """pybreaker changed state (under `self._lock`: only this class moves it)."""
        self.state_name = new
        self.closed = new == CLOSED
        if new == OPEN:
            self._opened_at = self._clock.monotonic()
            self._openings += 1
            self.reset_timeout = self._open_interval(self._openings)
        else:
            self._probes = 0
        if new == CLOSED:
            self._openings = 0
            self._tracker.reset()
        # pybreaker resets its count on entering closed, before it notifies listeners.
        self._quiet = self.closed and self.circuit.fail_counter == 0
        if self._on_state_change is not None:
            self._on_state_change(old, new)
