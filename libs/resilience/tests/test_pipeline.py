"""The whole pipeline with a fake clock, a scripted RNG and a fake transport: no grpc, no sleeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from resilience import (
    AttemptEnded,
    BreakerOptions,
    BreakerRejected,
    BreakerStateChanged,
    BulkheadOptions,
    BulkheadRejected,
    CallEnded,
    ClientPolicy,
    ConsecutiveFailures,
    DeadlineExceededLocally,
    Idempotency,
    LocalFailure,
    MethodPolicy,
    Pipeline,
    RecordingListener,
    RetryBudgetExhausted,
    RetryOptions,
    RetryScheduled,
    ThrottleOptions,
    deadline_scope,
)
from resilience._call import Status
from resilience.testing import FakeClock, ScriptedRng

Scripted = tuple[str, str | None]  # (code, pushback) of a failed attempt
GET = "/test.v1.Svc/Get"  # NO_SIDE_EFFECTS
CREATE = "/test.v1.Svc/Create"  # no idempotency level


@dataclass
class Request:
    key: bool = False
    statuses: list[Scripted | None] = field(default_factory=list)  # per attempt; None = OK


@dataclass
class FakeTransport:
    """Sends "attempts" by advancing the fake clock; records what the pipeline asked for."""

    clock: FakeClock
    latency: float = 0.01
    sent: list[tuple[int, float]] = field(default_factory=list)

    def send(
        self, ctx: Request, timeout: float, attempt: int
    ) -> tuple[Scripted | None, Status | None]:
        self.sent.append((attempt, timeout))
        self.clock.advance(min(self.latency, timeout))
        script = ctx.statuses
        status = script[attempt - 1] if attempt <= len(script) else script[-1]
        # The "response" is the scripted (code, pushback) itself.
        return status, None if status is None else (*status, ctx.key)

    def local_error(self, ctx: Request, failure: LocalFailure) -> Scripted | None:
        return (failure.code, f"local: {failure.details}")


UNAVAILABLE: Scripted = ("UNAVAILABLE", None)


def policy(**kwargs: object) -> ClientPolicy:
    retry = RetryOptions(max_attempts=4, initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2)
    defaults: dict[str, object] = {
        "default": MethodPolicy(timeout=10, retry=retry),
        "idempotency": {GET: Idempotency.NO_SIDE_EFFECTS},
        "breaker": None,
        "throttle": None,
        "bulkhead": None,
    }
    defaults.update(kwargs)
    return ClientPolicy(**defaults)  # type: ignore[arg-type]


def setup(
    p: ClientPolicy, rng: Sequence[float] = (0.5,)
) -> tuple[Pipeline, FakeTransport, FakeClock, RecordingListener]:
    clock = FakeClock()
    events = RecordingListener()
    pipeline = Pipeline(
        target="t:1", policy=p, listeners=[events], clock=clock, rng=ScriptedRng(rng)
    )
    return pipeline, FakeTransport(clock), clock, events


def call(
    pipeline: Pipeline, transport: FakeTransport, request: Request, method: str = GET
) -> Scripted | None:
    return pipeline.run(pipeline.plan(method), None, transport, request)


def test_transient_failures_are_retried_with_jittered_backoff() -> None:
    pipeline, transport, clock, events = setup(policy(), rng=[0.5])
    result = call(pipeline, transport, Request(statuses=[UNAVAILABLE, UNAVAILABLE, None]))
    assert result is None
    assert [a for a, _ in transport.sent] == [1, 2, 3]
    assert clock.sleeps == pytest.approx([0.05, 0.1])  # 0.5 * 0.1, 0.5 * 0.2
    retries = events.of(RetryScheduled)
    assert [(e.attempt, e.delay) for e in retries] == pytest.approx([(1, 0.05), (2, 0.1)])  # type: ignore[union-attr]
    ended = events.of(CallEnded)
    assert len(ended) == 1
    assert ended[0].attempts == 3
    assert ended[0].outcome == "success"
    assert [e.attempt for e in events.of(AttemptEnded)] == [1, 2, 3]  # type: ignore[union-attr]


def test_max_attempts_is_the_total_number_of_attempts() -> None:
    pipeline, transport, _, events = setup(policy())
    result = call(pipeline, transport, Request(statuses=[UNAVAILABLE]))
    assert result == UNAVAILABLE
    assert len(transport.sent) == 4
    assert events.of(CallEnded)[0].outcome == "error"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "INTERNAL"]
)
def test_codes_outside_the_retryable_set_are_not_retried(code: str) -> None:
    pipeline, transport, _, _ = setup(policy())
    assert call(pipeline, transport, Request(statuses=[(code, None)])) == (code, None)
    assert len(transport.sent) == 1


def test_non_idempotent_method_is_retried_only_with_a_key() -> None:
    pipeline, transport, _, _ = setup(policy())
    call(pipeline, transport, Request(statuses=[UNAVAILABLE]), method=CREATE)
    assert len(transport.sent) == 1
    transport.sent.clear()
    call(pipeline, transport, Request(key=True, statuses=[UNAVAILABLE, None]), method=CREATE)
    assert len(transport.sent) == 2


def test_pushback_replaces_backoff_and_negative_pushback_stops_retries() -> None:
    pipeline, transport, clock, events = setup(policy())
    call(pipeline, transport, Request(statuses=[("UNAVAILABLE", "700"), None]))
    assert clock.sleeps == [0.7]
    assert events.of(RetryScheduled)[0].pushback is True  # type: ignore[union-attr]
    transport.sent.clear()
    call(pipeline, transport, Request(statuses=[("UNAVAILABLE", "-1")]))
    assert len(transport.sent) == 1
    transport.sent.clear()
    call(pipeline, transport, Request(statuses=[("UNAVAILABLE", "soon")]))
    assert len(transport.sent) == 1


def test_backoff_restarts_from_initial_after_pushback() -> None:
    pipeline, transport, clock, _ = setup(policy(), rng=[0.5])
    call(
        pipeline,
        transport,
        Request(statuses=[UNAVAILABLE, ("UNAVAILABLE", "0"), UNAVAILABLE, None]),
    )
    assert clock.sleeps == pytest.approx([0.05, 0.0, 0.05])


def test_no_retry_that_would_end_past_the_deadline() -> None:
    retry = RetryOptions(max_attempts=5, initial_backoff=1, max_backoff=1, backoff_multiplier=1)
    pipeline, transport, clock, _ = setup(
        policy(default=MethodPolicy(timeout=1.5, retry=retry)), rng=[0.9]
    )
    result = call(pipeline, transport, Request(statuses=[UNAVAILABLE]))
    assert result == UNAVAILABLE
    assert len(transport.sent) == 2  # 0.01 + 0.9 + 0.01: a third would start at 1.82 > 1.5
    assert clock.sleeps == pytest.approx([0.9])


def test_each_attempt_timeout_is_capped_by_per_attempt_and_the_remaining_overall_deadline() -> None:
    retry = RetryOptions(
        max_attempts=3, per_attempt_timeout=0.4, initial_backoff=0.1, max_backoff=0.1
    )
    pipeline, transport, _, _ = setup(
        policy(default=MethodPolicy(timeout=1.0, retry=retry)), rng=[0.999]
    )
    transport.latency = 0.4  # every attempt runs into its own timeout
    result = call(pipeline, transport, Request(statuses=[("DEADLINE_EXCEEDED", None)]))
    assert result == ("DEADLINE_EXCEEDED", None)
    timeouts = [t for _, t in transport.sent]
    # 0.4 (per attempt), 0.4, then what is left of the overall 1.0: 1.0 - 0.4 - 0.1 - 0.4 - 0.1
    assert timeouts == pytest.approx([0.4, 0.4, 0.0002], abs=1e-3)


def test_overall_deadline_exceeded_is_not_retried() -> None:
    retry = RetryOptions(
        max_attempts=3, retryable_codes=frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
    )
    pipeline, transport, _, _ = setup(policy(default=MethodPolicy(timeout=0.5, retry=retry)))
    transport.latency = 1.0
    call(pipeline, transport, Request(statuses=[("DEADLINE_EXCEEDED", None)]))
    assert len(transport.sent) == 1


def test_inbound_deadline_caps_the_call_minus_margin() -> None:
    pipeline, transport, clock, _ = setup(policy(deadline_margin=0.05))
    with deadline_scope(0.3, clock):
        call(pipeline, transport, Request(statuses=[None]))
    assert transport.sent[0][1] == pytest.approx(0.25)


def test_caller_timeout_shorter_than_the_policy_wins() -> None:
    pipeline, transport, _, _ = setup(policy())
    pipeline.run(pipeline.plan(GET), 0.2, transport, Request(statuses=[None]))
    assert transport.sent[0][1] == pytest.approx(0.2)


def test_spent_budget_fails_fast_without_sending() -> None:
    pipeline, transport, clock, events = setup(policy(deadline_margin=0.05))
    with deadline_scope(0.04, clock):
        result = call(pipeline, transport, Request(statuses=[None]))
    assert result is not None
    assert result[0] == "DEADLINE_EXCEEDED"
    assert transport.sent == []
    assert len(events.of(DeadlineExceededLocally)) == 1
    assert events.of(CallEnded)[0].outcome == "deadline_exceeded_locally"  # type: ignore[union-attr]


def test_budget_sheds_retries_but_never_first_attempts() -> None:
    p = policy(throttle=ThrottleOptions(max_tokens=4, token_ratio=0.1))
    pipeline, transport, _, events = setup(p)
    for _ in range(10):
        call(pipeline, transport, Request(statuses=[UNAVAILABLE]))
    first_attempts = sum(1 for a, _ in transport.sent if a == 1)
    retries = len(transport.sent) - first_attempts
    assert first_attempts == 10
    # tokens: 4 -> 3 (retry) -> 2 (stop): exactly one retry ever, then none.
    assert retries == 1
    assert len(events.of(RetryBudgetExhausted)) == 10


def test_breaker_opens_fails_fast_and_a_probe_closes_it() -> None:
    b = BreakerOptions(trip=ConsecutiveFailures(threshold=3), reset_timeout=5)
    pipeline, transport, clock, events = setup(policy(breaker=b, default=MethodPolicy(timeout=1)))
    for _ in range(3):
        call(pipeline, transport, Request(statuses=[("INTERNAL", None)]))
    sent = len(transport.sent)
    result = call(pipeline, transport, Request(statuses=[None]))
    assert result is not None
    assert result[0] == "UNAVAILABLE"
    assert "circuit breaker for t:1 is open" in result[1]
    assert len(transport.sent) == sent  # failed fast: nothing sent
    assert len(events.of(BreakerRejected)) == 1
    clock.advance(5)
    assert call(pipeline, transport, Request(statuses=[None])) is None
    states = [(e.old, e.new) for e in events.of(BreakerStateChanged)]  # type: ignore[union-attr]
    assert states == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_an_open_breaker_stops_retries_at_once() -> None:
    b = BreakerOptions(trip=ConsecutiveFailures(threshold=1), reset_timeout=5)
    pipeline, transport, _, _ = setup(policy(breaker=b))
    result = call(pipeline, transport, Request(statuses=[UNAVAILABLE]))
    assert result == UNAVAILABLE  # the server's own error, not a breaker error
    assert len(transport.sent) == 1


def test_caller_mistakes_never_open_the_breaker() -> None:
    b = BreakerOptions(trip=ConsecutiveFailures(threshold=2))
    pipeline, transport, _, _ = setup(policy(breaker=b))
    for _ in range(5):
        call(pipeline, transport, Request(statuses=[("INVALID_ARGUMENT", None)]))
    breaker = pipeline.breaker()
    assert breaker is not None
    assert breaker.state_name == "closed"


def test_per_method_breakers_are_independent() -> None:
    b = BreakerOptions(trip=ConsecutiveFailures(threshold=1), per_method=True)
    pipeline, transport, _, _ = setup(policy(breaker=b))
    call(pipeline, transport, Request(statuses=[("INTERNAL", None)]), method=GET)
    assert call(pipeline, transport, Request(statuses=[None]), method=CREATE) is None


def test_bulkhead_rejects_over_the_limit() -> None:
    pipeline, transport, _, events = setup(policy(bulkhead=BulkheadOptions(max_concurrent_calls=1)))
    inner: list[Scripted | None] = []

    class Reentrant(FakeTransport):
        def send(
            self, ctx: Request, timeout: float, attempt: int
        ) -> tuple[Scripted | None, Status | None]:
            # A second call while the first is in flight.
            inner.append(call(pipeline, transport, Request(statuses=[None])))
            return None, None

    assert call(pipeline, Reentrant(transport.clock), Request()) is None
    assert inner[0] is not None
    assert inner[0][0] == "RESOURCE_EXHAUSTED"
    assert len(events.of(BulkheadRejected)) == 1
    assert pipeline.bulkhead is not None
    assert pipeline.bulkhead.in_flight == 0


def test_a_failing_listener_does_not_fail_the_call() -> None:
    def broken(event: object) -> None:
        raise RuntimeError("boom")

    pipeline = Pipeline(target="t", policy=policy(), listeners=[broken], clock=FakeClock())
    assert call(pipeline, FakeTransport(FakeClock()), Request(statuses=[None])) is None


class ShortcutListener(RecordingListener):
    """Takes first-attempt successes through `call_succeeded`, everything else as events."""

    def __init__(self) -> None:
        super().__init__()
        self.successes: list[tuple[object, float, float, float]] = []

    def call_succeeded(self, site: object, start: float, duration: float, timeout: float) -> None:
        self.successes.append((site, start, duration, timeout))


def test_a_first_attempt_success_is_one_call_to_listeners_that_offer_it() -> None:
    clock = FakeClock(100.0)
    shortcut, events = ShortcutListener(), RecordingListener()
    pipeline = Pipeline(
        target="t",
        policy=policy(),
        listeners=[shortcut, events],
        clock=clock,
        rng=ScriptedRng([0.5]),
    )
    assert call(pipeline, FakeTransport(clock, latency=0.25), Request(statuses=[None])) is None

    site = pipeline.plan(GET).site
    assert shortcut.successes == [(site, 100.0, 0.25, 10.0)]
    assert shortcut.events == []
    # A listener without the shortcut sees the very pair the shortcut stands for.
    assert events.events == [
        AttemptEnded(site, 1, "OK", 100.0, 0.25, 10.0),
        CallEnded(site, "OK", 1, 0.25, "success"),
    ]


def test_a_success_after_retries_is_events_for_every_listener() -> None:
    clock = FakeClock()
    shortcut = ShortcutListener()
    pipeline = Pipeline(
        target="t", policy=policy(), listeners=[shortcut], clock=clock, rng=ScriptedRng([0.5])
    )
    assert call(pipeline, FakeTransport(clock), Request(statuses=[UNAVAILABLE, None])) is None

    assert shortcut.successes == []
    assert [e.attempt for e in shortcut.of(AttemptEnded)] == [1, 2]
    assert [e.code for e in shortcut.of(AttemptEnded)] == ["UNAVAILABLE", "OK"]
    assert len(shortcut.of(RetryScheduled)) == 1
    assert len(shortcut.of(CallEnded)) == 1


def test_a_failing_shortcut_does_not_fail_the_call_or_starve_other_listeners() -> None:
    class Broken(ShortcutListener):
        def call_succeeded(self, *args: object) -> None:  # type: ignore[override]
            raise RuntimeError("boom")

    events = RecordingListener()
    pipeline = Pipeline(
        target="t", policy=policy(), listeners=[Broken(), events], clock=FakeClock()
    )
    assert call(pipeline, FakeTransport(FakeClock()), Request(statuses=[None])) is None
    assert len(events.of(CallEnded)) == 1
