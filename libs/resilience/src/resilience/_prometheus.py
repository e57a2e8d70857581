"""A listener that turns pipeline events into prometheus-client metrics.

Label children are bound once per (site, code) and cached, so a call costs dictionary lookups
and counter increments, never a `labels()` call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from . import metric_names as m
from ._codes import OK
from ._events import (
    OUTCOME_SUCCESS,
    AttemptEnded,
    BreakerRejected,
    BreakerStateChanged,
    BulkheadRejected,
    CallEnded,
    CallSite,
    DeadlineExceededLocally,
    Event,
    RetryBudgetExhausted,
    RetryScheduled,
)

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusListener:
    """Subscribe with `listeners=[PrometheusListener(registry=...)]`; one per registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        site = (m.TARGET, m.METHOD)
        self.calls = Counter(
            m.CALLS,
            "Logical calls by final code and outcome",
            (*site, m.CODE, m.OUTCOME),
            registry=registry,
        )
        self.attempts = Counter(
            m.ATTEMPTS, "Attempts sent, by code", (*site, m.CODE), registry=registry
        )
        self.retries = Counter(
            m.RETRIES, "Retries scheduled, by the failed code", (*site, m.CODE), registry=registry
        )
        self.budget_exhausted = Counter(
            m.RETRY_BUDGET_EXHAUSTED,
            "Retries refused by the target's retry budget",
            site,
            registry=registry,
        )
        self.rejections = Counter(
            m.REJECTIONS,
            "Calls failed locally without being sent",
            (*site, m.OUTCOME),
            registry=registry,
        )
        self.duration = Histogram(
            m.CALL_DURATION,
            "Logical call duration, retries included",
            (*site, m.OUTCOME),
            buckets=buckets,
            registry=registry,
        )
        self.breaker_state = Gauge(
            m.BREAKER_STATE, "0 closed, 1 half-open, 2 open", site, registry=registry
        )
        self.breaker_transitions = Counter(
            m.BREAKER_TRANSITIONS,
            "Breaker state changes, by new state",
            (*site, m.OUTCOME),
            registry=registry,
        )
        self._bound: dict[tuple[object, ...], Any] = {}
        self._ok_bound: dict[CallSite, tuple[Any, Any, Any]] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            AttemptEnded: self._attempt,
            CallEnded: self._call,
            RetryScheduled: self._retry,
            RetryBudgetExhausted: self._budget,
            BreakerRejected: self._rejected,
            BulkheadRejected: self._rejected,
            DeadlineExceededLocally: self._rejected,
            BreakerStateChanged: self._breaker,
        }

    def __call__(self, event: Event) -> None:
        self._handlers[type(event)](event)

    def _ok(self, site: CallSite) -> tuple[Any, Any, Any]:
        """The three children a successful call touches, bound once per site."""
        bound = self._ok_bound.get(site)
        if bound is None:
            bound = self._ok_bound[site] = (
                self._child(self.attempts, site, OK),
                self._child(self.calls, site, OK, OUTCOME_SUCCESS),
                self._child(self.duration, site, OUTCOME_SUCCESS),
            )
        return bound

    def _child(self, metric: Any, site: CallSite, *extra: str) -> Any:
        key = (metric, site, *extra)
        child = self._bound.get(key)
        if child is None:
            child = self._bound[key] = metric.labels(site.target, site.method, *extra)
        return child

    def _attempt(self, e: AttemptEnded) -> None:
        if e.code == OK:
            self._ok(e.site)[0].inc()
        else:
            self._child(self.attempts, e.site, e.code).inc()

    def _call(self, e: CallEnded) -> None:
        if e.outcome == OUTCOME_SUCCESS:
            _, calls, duration = self._ok(e.site)
        else:
            calls = self._child(self.calls, e.site, e.code, e.outcome)
            duration = self._child(self.duration, e.site, e.outcome)
        calls.inc()
        duration.observe(e.duration)

    def _retry(self, e: RetryScheduled) -> None:
        self._child(self.retries, e.site, e.code).inc()

    def _budget(self, e: RetryBudgetExhausted) -> None:
        self._child(self.budget_exhausted, e.site).inc()

    def _rejected(self, e: BreakerRejected | BulkheadRejected | DeadlineExceededLocally) -> None:
        outcome = {
            BreakerRejected: "breaker_open",
            BulkheadRejected: "bulkhead_full",
            DeadlineExceededLocally: "deadline_exceeded_locally",
        }[type(e)]
        self._child(self.rejections, e.site, outcome).inc()

    def _breaker(self, e: BreakerStateChanged) -> None:
        self.breaker_state.labels(e.target, e.method).set(m.BREAKER_STATE_VALUES.get(e.new, -1))
        self.breaker_transitions.labels(e.target, e.method, e.new).inc()
