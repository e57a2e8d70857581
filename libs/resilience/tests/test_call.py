"""The call state driven by hand, as the loops drive it: no transport, no loop, a fake clock."""

from __future__ import annotations

import pytest

from resilience import (
    AttemptEnded,
    BreakerOptions,
    BulkheadOptions,
    CallEnded,
    ClientPolicy,
    ConsecutiveFailures,
    Idempotency,
    MethodPolicy,
    Pipeline,
    RatioBudgetOptions,
    RecordingListener,
    RetryBudgetExhausted,
    RetryOptions,
    RetryScheduled,
)
from resilience._call import CallState
from resilience.testing import FakeClock, ScriptedRng

GET = "/test.v1.Svc/Get"  # NO_SIDE_EFFECTS
CREATE = "/test.v1.Svc/Create"  # no idempotency level


def pipeline(**kwargs: object) -> tuple[Pipeline, FakeClock, RecordingListener]:
    retry = RetryOptions(
        max_attempts=3, initial_backoff=0.1, max_backoff=1.0, per_attempt_timeout=0.5
    )
    options: dict[str, object] = {
        "default": MethodPolicy(timeout=2, retry=retry),
        "idempotency": {GET: Idempotency.NO_SIDE_EFFECTS},
        "breaker": None,
        "throttle": None,
        "bulkhead": None,
    }
    options.update(kwargs)
    clock, events = FakeClock(), RecordingListener()
    p = Pipeline(
        target="t",
        policy=ClientPolicy(**options),  # type: ignore[arg-type]
        listeners=[events],
        clock=clock,
        rng=ScriptedRng([0.5]),
    )
    return p, clock, events


def test_what_next_after_each_attempt() -> None:
    p, clock, events = pipeline()
    call = CallState(p.plan(GET), None)
    assert call.next_attempt() == 0.5  # the per-attempt timeout, shorter than the 2 s deadline
    clock.advance(0.5)
    assert call.attempt_ended(("UNAVAILABLE", None, False)) == pytest.approx(0.05)
    clock.advance(0.05)
    assert call.next_attempt() == 0.5
    assert call.attempt == 2
    clock.advance(0.1)
    assert call.attempt_ended(None) is None  # over: the attempt's result is the answer
    assert [type(e) for e in events.events] == [
        AttemptEnded,
        RetryScheduled,
        AttemptEnded,
        CallEnded,
    ]
    ended = events.of(CallEnded)[0]
    assert ended.attempts == 2  # type: ignore[union-attr]
    assert ended.duration == pytest.approx(0.65)  # type: ignore[union-attr]


def test_the_last_attempt_gets_what_is_left_of_the_deadline() -> None:
    p, clock, _ = pipeline(default=MethodPolicy(timeout=0.7, retry=RetryOptions(max_attempts=3)))
    call = CallState(p.plan(GET), None)
    assert call.next_attempt() == pytest.approx(0.7)
    clock.advance(0.69)
    delay = call.attempt_ended(("UNAVAILABLE", None, False))
    assert delay is None  # any backoff would end past the deadline


def test_a_key_makes_a_non_idempotent_method_retryable() -> None:
    p, _, _ = pipeline()
    plain, keyed = CallState(p.plan(CREATE), None), CallState(p.plan(CREATE), None)
    plain.next_attempt()
    keyed.next_attempt()
    assert plain.attempt_ended(("UNAVAILABLE", None, False)) is None
    assert keyed.attempt_ended(("UNAVAILABLE", None, True)) is not None


def test_refusal_says_why_and_frees_the_slot() -> None:
    breaker = BreakerOptions(trip=ConsecutiveFailures(threshold=1), reset_timeout=5)
    p, _, _ = pipeline(breaker=breaker, bulkhead=BulkheadOptions(max_concurrent_calls=1))
    first = CallState(p.plan(GET), None)
    first.next_attempt()
    assert first.attempt_ended(("INTERNAL", None, False)) is None  # opens the breaker
    refused = CallState(p.plan(GET), None)
    assert refused.next_attempt() is None
    assert "circuit breaker for t is open" in refused.failure.details
    assert p.bulkhead is not None
    assert p.bulkhead.in_flight == 0


def test_close_after_an_exception_gives_back_the_probe_and_the_slot() -> None:
    breaker = BreakerOptions(trip=ConsecutiveFailures(threshold=1), reset_timeout=1)
    p, clock, _ = pipeline(breaker=breaker, bulkhead=BulkheadOptions(max_concurrent_calls=1))
    opener = CallState(p.plan(GET), None)
    opener.next_attempt()
    opener.attempt_ended(("UNAVAILABLE", None, False))
    clock.advance(1)
    probing = CallState(p.plan(GET), None)
    assert probing.next_attempt() is not None  # the half-open breaker's one probe
    probing.close()  # e.g. the caller cancelled it mid-flight
    assert p.bulkhead is not None
    assert p.bulkhead.in_flight == 0
    again = CallState(p.plan(GET), None)
    assert again.next_attempt() is not None  # the probe slot was given back


def test_a_stream_has_one_attempt_and_no_per_attempt_timeout() -> None:
    p, clock, events = pipeline()
    stream = p.open_stream(p.stream_plan(GET), None)
    assert stream.timeout == 2
    clock.advance(0.3)
    stream.finish("UNAVAILABLE")
    assert [type(e) for e in events.events] == [AttemptEnded, CallEnded]


def test_a_ratio_budget_counts_sent_calls_and_withdraws_only_retries_that_go() -> None:
    budget = RatioBudgetOptions(budget_percent=50, min_retries_per_second=0, window=10)
    p, clock, events = pipeline(retry_budget=budget)
    short = CallState(p.plan(GET), 0.02)  # no time for any backoff: its failure stands
    short.next_attempt()
    assert short.attempt_ended(("UNAVAILABLE", None, False)) is None
    assert p.budget is not None
    assert p.budget.tokens == 0.5  # one call counted, no retry withdrawn

    second = CallState(p.plan(GET), None)
    second.next_attempt()  # 2 calls: one retry's worth
    assert second.attempt_ended(("UNAVAILABLE", None, False)) is not None
    clock.advance(0.05)
    second.next_attempt()
    assert second.attempt_ended(("UNAVAILABLE", None, False)) is None  # spent
    assert [type(e) for e in events.events].count(RetryBudgetExhausted) == 1
    exhausted = events.of(RetryBudgetExhausted)[0]
    assert exhausted.attempt == 2  # type: ignore[union-attr]


def test_a_refusal_says_how_many_attempts_went_before_it() -> None:
    breaker = BreakerOptions(trip=ConsecutiveFailures(threshold=2), reset_timeout=5)
    p, clock, _ = pipeline(breaker=breaker)
    racing, opener = CallState(p.plan(GET), None), CallState(p.plan(GET), None)
    racing.next_attempt()
    opener.next_attempt()
    delay = racing.attempt_ended(("UNAVAILABLE", None, False))  # 1 failure: retry
    assert delay is not None
    assert opener.attempt_ended(("UNAVAILABLE", None, False)) is None  # 2: the breaker opens
    clock.advance(delay)
    # The retry is refused, but one attempt of this call has gone: the callee may have acted.
    assert racing.next_attempt() is None
    assert racing.failure.attempts_sent == 1
    never = CallState(p.plan(GET), None)
    assert never.next_attempt() is None
    assert never.failure.attempts_sent == 0
