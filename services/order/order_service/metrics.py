"""The order service's own metrics: how sagas end, CreateOrder's latency with exemplars, the
orders that need a person, what the per-customer rate limit did, and the outbox relay.

CreateOrder answers OK whether its saga CONFIRMED the order or FAILED it, so the gRPC codes
say nothing of a payment service that declines nothing but is down: :class:`SagaOutcomes`
does. Names and labels are in :mod:`order_service.metric_names`.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from meshkit.method_metrics import MethodDurationInterceptor
from meshkit.process_wide import process_wide
from order_service import metric_names as m
from order_service.domain import Reason, Status
from order_service.outbox import Backlog, RelayListener
from order_service.ratelimit import Outcome

#: The (outcome, reason) pairs a run can end in; each series exists from start-up at 0, so a
#: ratio over them is 0, not empty, before the first failure.
OUTCOME_REASONS: tuple[tuple[Status, Reason], ...] = (
    (Status.CONFIRMED, Reason.NONE),
    *(
        (Status.FAILED, reason)
        for reason in Reason
        if reason not in (Reason.NONE, Reason.LEASE_LOST)
    ),
    (Status.PENDING, Reason.DEPENDENCY_UNAVAILABLE),
    (Status.PENDING, Reason.DEPENDENCY_REJECTED),
    (Status.PENDING, Reason.LEASE_LOST),
)

#: Seconds; the SLO's 1 s is a bound, so "within 1 s" is one bucket's count.
CREATE_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SagaOutcomes:
    """Counts saga runs by the status they left the order in and why (see metric_names)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._counter = Counter(
            m.SAGA_OUTCOMES,
            "Saga runs by the order's status at their end and the reason class",
            (m.OUTCOME, m.REASON),
            registry=registry,
        )
        self._series = {
            (status, reason): self._counter.labels(status.value, reason.value)
            for status, reason in OUTCOME_REASONS
        }

    def record(self, status: Status, reason: Reason) -> None:
        series = self._series.get((status, reason))
        if series is None:  # a pair no run should end in; counted all the same
            series = self._counter.labels(status.value, reason.value)
        series.inc()


class RateLimitDecisions:
    """Counts the rate limit's decisions by outcome; every outcome's series exists from 0."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        counter = Counter(
            m.RATE_LIMIT_DECISIONS,
            "CreateOrders of new request_ids by what the per-customer rate limit did",
            (m.OUTCOME,),
            registry=registry,
        )
        self._series = {outcome: counter.labels(outcome.value) for outcome in Outcome}

    def record(self, outcome: Outcome) -> None:
        self._series[outcome].inc()


def create_duration(registry: CollectorRegistry | None = REGISTRY) -> Histogram:
    return Histogram(
        m.CREATE_DURATION,
        "CreateOrder handling time; exemplars are sampled calls' trace ids",
        buckets=CREATE_DURATION_BUCKETS,
        registry=registry,
    )


saga_outcomes = process_wide(SagaOutcomes)
"""The process-wide outcome counter (one registry; tests build several apps)."""

_create_duration = process_wide(create_duration)


def create_duration_interceptor(method: str) -> MethodDurationInterceptor:
    """Observes ``method`` (CreateOrder's full path) in the process-wide histogram."""
    return MethodDurationInterceptor(method, _create_duration())


@process_wide
def needs_attention() -> Gauge:
    """The process-wide gauge of PENDING orders flagged for a person (set by recovery)."""
    return Gauge(m.NEEDS_ATTENTION, "PENDING orders whose saga needs a person to look at it")


rate_limit_decisions = process_wide(RateLimitDecisions)
"""The process-wide counter of the rate limit's decisions."""


class OutboxMetrics(RelayListener):
    """The outbox relay's backlog and what it published (see metric_names)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._pending = Gauge(
            m.OUTBOX_PENDING, "Order events waiting in the outbox", registry=registry
        )
        self._oldest = Gauge(
            m.OUTBOX_OLDEST_AGE,
            "Seconds the oldest order event in the outbox has waited",
            registry=registry,
        )
        self._published = Counter(
            m.EVENTS_PUBLISHED, "Order events published to the stream", registry=registry
        )
        self._failures = Counter(
            m.EVENTS_PUBLISH_FAILURES,
            "Outbox relay rounds that could not publish (redis unavailable)",
            registry=registry,
        )

    def published(self, count: int) -> None:
        self._published.inc(count)

    def failed(self) -> None:
        self._failures.inc()

    def backlog(self, backlog: Backlog) -> None:
        self._pending.set(backlog.pending)
        self._oldest.set(backlog.oldest_age_s)


outbox_metrics = process_wide(OutboxMetrics)
"""The process-wide outbox relay metrics."""
