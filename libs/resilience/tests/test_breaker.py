from __future__ import annotations

import subprocess
import sys

import pybreaker
import pytest

from resilience import (
    Breaker,
    BreakerOpen,
    BreakerOptions,
    ConsecutiveFailures,
    FailureRate,
    PolicyError,
)
from resilience.testing import FakeClock


def make(
    clock: FakeClock, changes: list[tuple[str, str]] | None = None, **kwargs: object
) -> Breaker:
    options = BreakerOptions(**kwargs)  # type: ignore[arg-type]
    on_change = (lambda old, new: changes.append((old, new))) if changes is not None else None
    return Breaker(options, name="inventory:50051", clock=clock, on_state_change=on_change)


def fail(breaker: Breaker, n: int = 1) -> None:
    for _ in range(n):
        probe = breaker.acquire()
        breaker.record(probe, True)


def succeed(breaker: Breaker, n: int = 1) -> None:
    for _ in range(n):
        probe = breaker.acquire()
        breaker.record(probe, False)


def test_is_a_pybreaker_state_machine() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=1)
    assert isinstance(breaker.circuit, pybreaker.CircuitBreaker)
    assert isinstance(breaker.circuit.state, pybreaker.CircuitClosedState)
    fail(breaker)
    assert isinstance(breaker.circuit.state, pybreaker.CircuitOpenState)
    clock.advance(1)
    breaker.acquire()
    assert isinstance(breaker.circuit.state, pybreaker.CircuitHalfOpenState)


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    changes: list[tuple[str, str]] = []
    breaker = make(clock, changes, trip=ConsecutiveFailures(threshold=3))
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state_name == "closed"
    fail(breaker)
    assert breaker.state_name == "open"
    assert changes == [("closed", "open")]


def test_open_fails_fast_naming_target_and_probe_time() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=5)
    fail(breaker)
    clock.advance(2)
    with pytest.raises(BreakerOpen) as err:
        breaker.acquire()
    assert err.value.code == "UNAVAILABLE"
    assert "inventory:50051" in err.value.details
    assert "will probe again in 3.000s" in err.value.details
    assert err.value.probe_in == pytest.approx(3)


def test_half_open_admits_a_bounded_number_of_probes() -> None:
    clock = FakeClock()
    changes: list[tuple[str, str]] = []
    breaker = make(
        clock,
        changes,
        trip=ConsecutiveFailures(threshold=1),
        reset_timeout=1,
        half_open_max_calls=2,
    )
    fail(breaker)
    clock.advance(1)
    assert breaker.acquire() is True
    assert breaker.acquire() is True
    with pytest.raises(BreakerOpen, match="half-open"):
        breaker.acquire()
    assert breaker.state_name == "half-open"
    breaker.record(True, None)  # a cancelled probe gives its slot back without a verdict
    assert breaker.acquire() is True
    assert changes == [("closed", "open"), ("open", "half-open")]


def test_a_successful_probe_closes_it() -> None:
    clock = FakeClock()
    changes: list[tuple[str, str]] = []
    breaker = make(clock, changes, trip=ConsecutiveFailures(threshold=1), reset_timeout=1)
    fail(breaker)
    clock.advance(1)
    succeed(breaker)
    assert breaker.state_name == "closed"
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert breaker.acquire() is False


def test_a_failed_probe_reopens_it_for_another_reset_timeout() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=1)
    fail(breaker)
    clock.advance(1)
    fail(breaker)
    assert breaker.state_name == "open"
    assert breaker.probe_in() == pytest.approx(1)


def test_each_failed_probe_doubles_the_open_interval_up_to_the_maximum() -> None:
    clock = FakeClock()
    breaker = make(
        clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=0.5, max_reset_timeout=3
    )
    fail(breaker)
    intervals = []
    for _ in range(5):
        wait = breaker.probe_in()
        assert wait is not None
        intervals.append(wait)
        clock.advance(wait)
        fail(breaker)  # the probe fails: open again, for longer
    assert intervals == pytest.approx([0.5, 1, 2, 3, 3])


def test_closing_starts_the_open_interval_over() -> None:
    clock = FakeClock()
    breaker = make(
        clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=0.5, max_reset_timeout=3
    )
    fail(breaker)
    clock.advance(0.5)
    fail(breaker)  # reopened for 1 s
    clock.advance(1)
    succeed(breaker)  # the probe succeeds: closed
    fail(breaker)
    assert breaker.probe_in() == pytest.approx(0.5)


def test_success_threshold_needs_that_many_successful_probes() -> None:
    clock = FakeClock()
    breaker = make(
        clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=1, success_threshold=2
    )
    fail(breaker)
    clock.advance(1)
    succeed(breaker)
    assert breaker.state_name == "half-open"
    succeed(breaker)
    assert breaker.state_name == "closed"


def test_late_outcomes_of_calls_admitted_while_closed_do_not_decide_a_half_open_breaker() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=ConsecutiveFailures(threshold=1), reset_timeout=1)
    straggler = breaker.acquire()
    fail(breaker)
    clock.advance(1)
    probe = breaker.acquire()
    breaker.record(straggler, True)
    assert breaker.state_name == "half-open"
    breaker.record(probe, False)
    assert breaker.state_name == "closed"


def test_failure_rate_trips_only_after_minimum_calls() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=FailureRate(threshold=0.5, window=10, minimum_calls=10))
    for _ in range(4):
        succeed(breaker)
        fail(breaker)
    assert breaker.state_name == "closed"  # 8 calls, 50% failing, below the minimum
    succeed(breaker)
    fail(breaker)  # 10 calls, 5 failures
    assert breaker.state_name == "open"


def test_failure_rate_forgets_calls_older_than_the_window() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=FailureRate(threshold=0.5, window=10, minimum_calls=4))
    fail(breaker, 3)  # 3 failures of 3 calls: below the minimum
    clock.advance(11)
    succeed(breaker, 3)
    fail(breaker)  # the old failures are gone: 1 of 4
    assert breaker.state_name == "closed"


def test_failure_rate_below_threshold_stays_closed() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=FailureRate(threshold=0.5, window=10, minimum_calls=5))
    for _ in range(50):
        succeed(breaker, 2)
        fail(breaker)
        clock.advance(0.3)
    assert breaker.state_name == "closed"


def test_trip_conditions_combine_with_or() -> None:
    clock = FakeClock()
    trip = ConsecutiveFailures(threshold=3) | FailureRate(
        threshold=0.9, window=10, minimum_calls=100
    )
    breaker = make(clock, trip=trip)
    fail(breaker, 3)
    assert breaker.state_name == "open"


def test_successes_after_a_failure_still_count_in_the_rate_window() -> None:
    # A failure leaves the breaker closed but not quiet: the next success takes pybreaker's
    # full path (resetting its counter), and must still land in the window.
    clock = FakeClock()
    breaker = make(clock, trip=FailureRate(threshold=0.5, window=10, minimum_calls=4))
    fail(breaker)
    succeed(breaker, 2)  # 1 failure of 3 calls
    fail(breaker)  # 2 of 4 calls: trips only if both successes were counted
    assert breaker.state_name == "open"
    assert breaker.fail_counter == 1  # the successes reset pybreaker's consecutive count


def test_successes_feed_every_rate_window_of_a_combination() -> None:
    clock = FakeClock()
    trip = FailureRate(threshold=0.5, window=10, minimum_calls=4) | FailureRate(
        threshold=0.25, window=10, minimum_calls=8
    )
    breaker = make(clock, trip=trip)
    succeed(breaker, 6)
    fail(breaker)  # first: 1 of 7 calls, 14% < 50%; second: 7 calls < 8
    assert breaker.state_name == "closed"
    fail(breaker)  # first: 2 of 8, 25% < 50%; second: 2 of 8, 25% >= 25%
    assert breaker.state_name == "open"


def test_a_late_reading_of_the_clock_counts_in_its_own_bucket() -> None:
    # Buckets are 1 s wide; the newest is kept, an outcome read earlier goes where it belongs.
    clock = FakeClock(1000.5)
    breaker = make(clock, trip=FailureRate(threshold=0.5, window=10, minimum_calls=4))
    breaker.record(False, False, 1000.5)
    breaker.record(False, False, 1001.5)
    breaker.record(False, False, 1000.9)  # a thread that read the clock before the last one
    clock.now = 1010.2  # the window now starts at 1001: both 1000.x successes have expired
    fail(breaker, 2)  # 3 calls in the window (1001.5 and two failures): below the minimum
    assert breaker.state_name == "closed"
    fail(breaker)  # 3 failures of 4
    assert breaker.state_name == "open"


def test_a_success_racing_a_failure_is_accounted_in_full() -> None:
    # The success reads "quiet" without the lock; a failure lands before it takes the lock.
    clock = FakeClock()
    breaker = make(clock, trip=FailureRate(threshold=0.75, window=10, minimum_calls=4))
    lock = breaker._lock

    class FailureFirst:
        def acquire(self) -> None:
            breaker._lock = lock
            fail(breaker)
            lock.acquire()

        def release(self) -> None:
            lock.release()

    breaker._lock = FailureFirst()  # type: ignore[assignment]
    succeed(breaker)
    assert breaker.fail_counter == 0  # the success came last: pybreaker's count was reset
    fail(breaker, 2)  # 3 failures of 4 calls: the racing success was counted once
    assert breaker.state_name == "open"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"reset_timeout": 0}, "resetTimeout"),
        ({"reset_timeout": 2, "max_reset_timeout": 1}, "maxResetTimeout"),
        ({"half_open_max_calls": 0}, "halfOpenMaxCalls"),
        ({"success_threshold": 0}, "successThreshold"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(PolicyError, match=field):
        BreakerOptions(**kwargs)  # type: ignore[arg-type]


def test_bad_failure_rate_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"failureRate.threshold: must be in \(0, 1\]"):
        FailureRate(threshold=1.5, window=10, minimum_calls=1)


def test_importing_the_library_leaves_redis_unloaded_and_importable() -> None:
    # A fresh interpreter: this one has loaded redis through other tests' imports.
    probe = (
        "import sys, resilience\n"
        "assert 'redis' not in sys.modules, 'pybreaker pulled in redis'\n"
        "import redis\n"
        "assert redis.Redis\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
