"""A listener that turns pipeline events into Prometheus metrics.

The listener is its own prometheus-client collector. prometheus-client's `Counter.inc()` and
`Histogram.observe()` cost a method chain and a lock each, four per successful call, which was
the largest single cost of the pipeline's happy path. Here a successful call costs two dict
lookups and two short critical sections on plain numbers; the samples are built at scrape
time, in exactly the shape prometheus-client's own Counter/Histogram/Gauge would export
(`_total`, `_created`, cumulative `_bucket`, `_count`, `_sum`). A first-attempt success
arrives as one `call_succeeded` call instead of two events: one critical section.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client.metrics
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

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

# prometheus-client's own `le` formatting ("+Inf", "0.005", "1.0"); it ships untyped.
_format_le: Callable[[float], str] = floatToGoString

_SITE = (m.TARGET, m.METHOD)
_REJECTION_OUTCOMES: dict[type[Any], str] = {
    BreakerRejected: "breaker_open",
    BulkheadRejected: "bulkhead_full",
    DeadlineExceededLocally: "deadline_exceeded_locally",
}


class _Count:
    """One counter series."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class _Distribution:
    """One histogram series: per-bucket (not cumulative) counts, the last one +Inf."""

    __slots__ = ("buckets", "created", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0
        self.created = time.time()


class _Family:
    """One metric: its series by label values, created on first use."""

    __slots__ = ("documentation", "kind", "labelnames", "name", "series")

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], kind: str
    ) -> None:
        # A counter's family is `<name>`, its samples `<name>_total`, as prometheus-client has it.
        self.name = name.removesuffix("_total") if kind == "c" else name
        self.documentation = documentation
        self.kind = kind
        self.labelnames = labelnames
        self.series: dict[tuple[str, ...], Any] = {}


class PrometheusListener:
    """Subscribe with `listeners=[PrometheusListener(registry=...)]`; one per registry.

    `registry=None` registers nowhere (register it yourself: it is a collector).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._lock = threading.Lock()
        self.calls = _Family(
            m.CALLS, "Logical calls by final code and outcome", (*_SITE, m.CODE, m.OUTCOME), "c"
        )
        self.attempts = _Family(m.ATTEMPTS, "Attempts sent, by code", (*_SITE, m.CODE), "c")
        self.retries = _Family(
            m.RETRIES, "Retries scheduled, by the failed code", (*_SITE, m.CODE), "c"
        )
        self.budget_exhausted = _Family(
            m.RETRY_BUDGET_EXHAUSTED, "Retries refused by the target's retry budget", _SITE, "c"
        )
        self.rejections = _Family(
            m.REJECTIONS, "Calls failed locally without being sent", (*_SITE, m.OUTCOME), "c"
        )
        self.duration = _Family(
            m.CALL_DURATION, "Logical call duration, retries included", (*_SITE, m.OUTCOME), "h"
        )
        self.breaker_state = _Family(m.BREAKER_STATE, "0 closed, 1 half-open, 2 open", _SITE, "g")
        self.breaker_transitions = _Family(
            m.BREAKER_TRANSITIONS,
            "Breaker state changes, by new state",
            (*_SITE, m.OUTCOME),
            "c",
        )
        self._families = (
            self.calls,
            self.attempts,
            self.retries,
            self.budget_exhausted,
            self.rejections,
            self.duration,
            self.breaker_state,
            self.breaker_transitions,
        )
        # The series a successful call touches, found once per site: (attempts{OK},
        # calls{OK, success}, duration{success}).
        self._ok: dict[CallSite, tuple[_Count, _Count, _Distribution]] = {}
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
        if registry is not None:
            registry.register(self)

    # -- the hot path -------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        self._handlers[type(event)](event)

    def call_succeeded(self, site: CallSite, start: float, duration: float, timeout: float) -> None:
        """A first-attempt success: `_attempt` and `_call` of the event pair in one section."""
        found = self._ok.get(site)
        attempts, calls, distribution = found if found is not None else self._ok_series(site)
        i = bisect.bisect_left(self._bounds, duration)
        # acquire/release rather than `with`: half the instructions, on every call.
        lock = self._lock
        lock.acquire()
        try:
            attempts.value += 1
            calls.value += 1
            distribution.sum += duration
            distribution.buckets[i] += 1
        finally:
            lock.release()

    def _ok_series(self, site: CallSite) -> tuple[_Count, _Count, _Distribution]:
        found = self._ok.get(site)
        if found is None:
            found = self._ok[site] = (
                self._series(self.attempts, (site.target, site.method, OK)),
                self._series(self.calls, (site.target, site.method, OK, OUTCOME_SUCCESS)),
                self._series(self.duration, (site.target, site.method, OUTCOME_SUCCESS)),
            )
        return found

    def _attempt(self, e: AttemptEnded) -> None:
        site = e.site
        if e.code == OK:
            count = self._ok_series(site)[0]
        else:
            count = self._series(self.attempts, (site.target, site.method, e.code))
        with self._lock:
            count.value += 1

    def _call(self, e: CallEnded) -> None:
        site = e.site
        if e.outcome == OUTCOME_SUCCESS and e.code == OK:
            _, count, distribution = self._ok_series(site)
        else:
            count = self._series(self.calls, (site.target, site.method, e.code, e.outcome))
            distribution = self._series(self.duration, (site.target, site.method, e.outcome))
        duration = e.duration
        # bisect_left: the first bound >= duration, as Histogram.observe's `amount <= bound`.
        i = bisect.bisect_left(self._bounds, duration)
        with self._lock:
            count.value += 1
            distribution.sum += duration
            distribution.buckets[i] += 1

    # -- the rest (failures, rejections, breaker changes) ---------------------------------

    def _series(self, family: _Family, labels: tuple[str, ...]) -> Any:
        series = family.series.get(labels)
        if series is None:
            with self._lock:
                series = family.series.get(labels)
                if series is None:
                    h = family.kind == "h"
                    series = _Distribution(len(self._bounds)) if h else _Count()
                    family.series[labels] = series
        return series

    def _inc(self, family: _Family, labels: tuple[str, ...]) -> None:
        count = self._series(family, labels)
        with self._lock:
            count.value += 1

    def _retry(self, e: RetryScheduled) -> None:
        self._inc(self.retries, (e.site.target, e.site.method, e.code))

    def _budget(self, e: RetryBudgetExhausted) -> None:
        self._inc(self.budget_exhausted, (e.site.target, e.site.method))

    def _rejected(self, e: BreakerRejected | BulkheadRejected | DeadlineExceededLocally) -> None:
        outcome = _REJECTION_OUTCOMES[type(e)]
        self._inc(self.rejections, (e.site.target, e.site.method, outcome))

    def _breaker(self, e: BreakerStateChanged) -> None:
        gauge = self._series(self.breaker_state, (e.target, e.method))
        with self._lock:
            gauge.value = float(m.BREAKER_STATE_VALUES.get(e.new, -1))
        self._inc(self.breaker_transitions, (e.target, e.method, e.new))

    # -- the collector (scrape time) ----------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return [self._metric(f) for f in self._families]

    def collect(self) -> Iterator[Metric]:
        created = getattr(prometheus_client.metrics, "_use_created", True)
        les = [_format_le(b) for b in self._bounds]
        for family in self._families:
            metric = self._metric(family)
            with self._lock:
                series = [(k, v, self._snapshot(family, v)) for k, v in family.series.items()]
            for values, s, snap in series:
                labels = dict(zip(family.labelnames, values, strict=True))
                if family.kind == "c":
                    metric.add_sample(f"{family.name}_total", labels, snap)
                    if created:
                        metric.add_sample(f"{family.name}_created", labels, s.created)
                elif family.kind == "g":
                    metric.add_sample(family.name, labels, snap)
                else:
                    buckets, total = snap
                    cumulative = 0.0
                    for le, n in zip(les, buckets, strict=True):
                        cumulative += n
                        metric.add_sample(f"{family.name}_bucket", {**labels, "le": le}, cumulative)
                    metric.add_sample(f"{family.name}_count", labels, cumulative)
                    metric.add_sample(f"{family.name}_sum", labels, total)
                    if created:
                        metric.add_sample(f"{family.name}_created", labels, s.created)
            yield metric

    @staticmethod
    def _snapshot(family: _Family, series: Any) -> Any:
        if family.kind == "h":
            return list(series.buckets), series.sum
        return series.value

    @staticmethod
    def _metric(family: _Family) -> Metric:
        kind = {"c": "counter", "g": "gauge", "h": "histogram"}[family.kind]
        return Metric(family.name, family.documentation, kind)
