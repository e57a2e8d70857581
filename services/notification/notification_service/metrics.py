"""The consumers' metrics (names in :mod:`notification_service.metric_names`)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from meshkit.order_events import ORDER_CONFIRMED, ORDER_FAILED
from meshkit.process_wide import process_wide
from notification_service import metric_names as m

from .stream import GroupInfo


class ConsumerMetrics:
    """Counters and gauges of the consumer group; tests pass a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._stored = Counter(
            m.STORED, "Notifications stored, by event type", (m.TYPE,), registry=registry
        )
        for event_type in (ORDER_CONFIRMED, ORDER_FAILED):  # each series exists from 0
            self._stored.labels(event_type)
        self._duplicates = Counter(
            m.DUPLICATES, "Redelivered events whose notification existed", registry=registry
        )
        self._failures = Counter(m.FAILURES, "Deliveries that failed", registry=registry)
        self._dead = Counter(
            m.DEAD_LETTERED, "Entries moved to the dead letters", (m.CAUSE,), registry=registry
        )
        for cause in (m.CAUSE_FAILED, m.CAUSE_OVERDELIVERED):
            self._dead.labels(cause)
        self._claimed = Counter(m.CLAIMED, "Entries claimed from idle consumers", registry=registry)
        self._lag = Gauge(m.LAG, "Stream entries not yet delivered to the group", registry=registry)
        self._pending = Gauge(m.PENDING, "Entries delivered, not acknowledged", registry=registry)
        self._redis_errors = Counter(
            m.REDIS_ERRORS, "Failed Redis calls of the consumers", registry=registry
        )

    def stored(self, event_type: str) -> None:
        self._stored.labels(event_type).inc()

    def duplicate(self) -> None:
        self._duplicates.inc()

    def failed(self) -> None:
        self._failures.inc()

    def dead_lettered(self, cause: str) -> None:
        self._dead.labels(cause).inc()

    def claimed(self, count: int) -> None:
        self._claimed.inc(count)

    def group(self, info: GroupInfo) -> None:
        if info.lag is not None:  # Redis cannot tell it for a while after entries are deleted
            self._lag.set(info.lag)
        self._pending.set(info.pending)

    def redis_error(self) -> None:
        self._redis_errors.inc()


consumer_metrics = process_wide(ConsumerMetrics)
"""The process-wide metrics (one registry; tests start several servers in one process)."""
