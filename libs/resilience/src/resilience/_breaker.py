"""Circuit breaker on pybreaker's state machine, used as "ask before, record after".

pybreaker's `CircuitBreaker.call()` holds one lock for the whole wrapped call, which serialises
every thread (pybreaker #3, #55). This module never calls it. It keeps pybreaker's states,
counters, transitions (`open()`, `half_open()`, `close()`) and listeners, and replaces only
the parts that assumed a wrapped call:

* `acquire()` asks before an attempt: closed passes, open fails fast until the reset timeout has
  passed on the injected clock, half-open lets at most `half_open_max_calls` probes through;
* `record()` feeds the outcome into pybreaker's `_handle_error` / `_handle_success`, whose
  state hooks decide transitions; in the closed state the hook asks a `TripCondition`.

When to trip is a composable value: `ConsecutiveFailures(5) | FailureRate(...)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pybreaker

from ._clock import Clock
from ._codes import UNAVAILABLE
from ._errors import LocalFailure, PolicyError

DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_RESET_TIMEOUT = 5.0
DEFAULT_HALF_OPEN_MAX_CALLS = 1
DEFAULT_SUCCESS_THRESHOLD = 1
_WINDOW_BUCKETS = 10

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
    reset_timeout: float = DEFAULT_RESET_TIMEOUT
    half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    per_method: bool = False

    def __post_init__(self) -> None:
        if not 0.001 <= self.reset_timeout <= 3600:
            raise PolicyError("resetTimeout", "in [0.001, 3600] seconds", self.reset_timeout)
        if not 1 <= self.half_open_max_calls <= 1000:
            raise PolicyError(
                "halfOpenMaxCalls", "an integer in [1, 1000]", self.half_open_max_calls
            )
        if not 1 <= self.success_threshold <= 1000:
            raise PolicyError("successThreshold", "an integer in [1, 1000]", self.success_threshold)


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
    """What pybreaker's `_handle_error` is given: it only needs an exception to pass along."""


_FAILURE = _Failure("attempt failed with an availability error")


class _Closed(pybreaker.CircuitClosedState):
    def on_failure(self, exc: BaseException) -> None:
        breaker = self._breaker
        assert isinstance(breaker, Breaker)
        if breaker._tracker.record_failure(breaker._clock.monotonic(), breaker.fail_counter):
            breaker.open()

    def on_success(self) -> None:
        breaker = self._breaker
        assert isinstance(breaker, Breaker)
        if breaker._record_success is not None:
            breaker._record_success(breaker._clock.monotonic())


class _Open(pybreaker.CircuitOpenState):
    pass


class _HalfOpen(pybreaker.CircuitHalfOpenState):
    def on_failure(self, exc: BaseException) -> None:  # type: ignore[override]  # pybreaker's raises; ours records
        self._breaker.open()


_STATES: dict[str, type[_Closed | _Open | _HalfOpen]] = {
    CLOSED: _Closed,
    OPEN: _Open,
    HALF_OPEN: _HalfOpen,
}


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


class Breaker(pybreaker.CircuitBreaker):
    """One target's (or one method's) breaker; thread-safe, never holds its lock across an RPC."""

    def __init__(
        self,
        options: BreakerOptions,
        *,
        name: str,
        clock: Clock,
        on_state_change: Callable[[str, str], None] | None = None,
    ) -> None:
        # Set before super().__init__, which builds the first state through _create_new_state.
        self._clock = clock
        self._tracker = options.trip.tracker()
        self._record_success = self._tracker.record_success
        self._half_open_max = options.half_open_max_calls
        self._probes = 0
        self._opened_mono = 0.0
        # Read without the lock by callers: closed means `acquire()` would return False.
        self.closed = True
        # Closed with no failure counted: a success only feeds the trip window. Kept
        # under the lock by every state change and recorded outcome; read without it.
        self._quiet = True
        listeners = [_StateListener(on_state_change)] if on_state_change else []
        threshold = options.trip.threshold if isinstance(options.trip, ConsecutiveFailures) else 0
        super().__init__(
            fail_max=threshold,  # informative only: _Closed.on_failure asks the trip condition
            reset_timeout=options.reset_timeout,
            success_threshold=options.success_threshold,
            listeners=listeners,
            name=name,
            throw_new_error_on_trip=False,
        )

    def _create_new_state(
        self,
        new_state: str,
        prev_state: pybreaker.CircuitBreakerState | None = None,
        notify: bool = False,
    ) -> pybreaker.CBStateType:
        state = _STATES[new_state](self, prev_state=prev_state, notify=notify)
        self.closed = new_state == CLOSED
        # pybreaker resets the failure count when it closes with notify, not on start-up.
        self._quiet = self.closed and self._state_storage.counter == 0
        if new_state != OPEN:
            self._probes = 0
        if new_state == CLOSED and notify:
            self._tracker.reset()
        return state

    def open(self) -> bool:
        with self._lock:
            self._opened_mono = self._clock.monotonic()
            return super().open()

    @property
    def state_name(self) -> str:
        return str(self._state.name)

    def probe_in(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None unless open."""
        if self._state.name != OPEN:
            return None
        return max(0.0, self._opened_mono + self.reset_timeout - self._clock.monotonic())

    def acquire(self) -> bool:
        """Ask before an attempt: True for a half-open probe, False for a normal call.

        Raises BreakerOpen when the attempt must not be sent.
        """
        if self.closed:  # unlocked read: the happy path takes no lock
            return False
        with self._lock:
            name = self._state.name
            if name == CLOSED:
                return False
            if name == OPEN:
                probe_in = self._opened_mono + self.reset_timeout - self._clock.monotonic()
                if probe_in > 0:
                    raise BreakerOpen(str(self.name), OPEN, probe_in)
                self.half_open()
            if self._probes >= self._half_open_max:
                raise BreakerOpen(str(self.name), HALF_OPEN, None)
            self._probes += 1
            return True

    def record(self, probe: bool, failed: bool | None, now: float | None = None) -> None:
        """Record after an attempt: failed=None means no verdict (e.g. cancelled by the caller).

        `now` is the caller's `clock.monotonic()` reading, if it has one (saves a clock read).
        """
        if self._quiet and failed is False and not probe:
            # Happy path. pybreaker's _handle_success would reset a zero counter, call
            # on_success (which feeds the trip tracker) and notify listeners of nothing we
            # subscribe to: do only the tracker part, and take no lock if it needs nothing.
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
            state = self._state
            # A call admitted while closed that ends after the breaker opened says nothing
            # about the probes; only probes decide a half-open breaker.
            if failed is None or state.name == OPEN or (state.name == HALF_OPEN and not probe):
                return
            if failed:
                state._handle_error(_FAILURE, reraise=False)
            else:
                state._handle_success()
            self._quiet = self.closed and self._state_storage.counter == 0
