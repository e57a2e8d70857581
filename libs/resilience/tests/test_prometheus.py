"""The listener exports what prometheus-client's own Counter/Histogram would, sample for sample."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

import resilience
from resilience import metric_names as m
from resilience._events import (
    AttemptEnded,
    BreakerRejected,
    BreakerStateChanged,
    CallEnded,
    CallSite,
    RetryScheduled,
)
from resilience._prometheus import DEFAULT_BUCKETS

SITE = CallSite(target="t", method="/a.B/C", service="a.B", name="C")
LABELS = {"target": "t", "method": "/a.B/C"}
# On a bound, between bounds, below the first and above the last.
DURATIONS = (0.0004, 0.001, 0.0025, 0.003, 0.7, 10.0, 20.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_success_path_matches_prometheus_client() -> None:
    ours = CollectorRegistry()
    listener = resilience.PrometheusListener(registry=ours)
    for d in DURATIONS:
        listener(AttemptEnded(SITE, 1, "OK", 0.0, d, 2.0))
        listener(CallEnded(SITE, "OK", 1, d, "success"))

    theirs = CollectorRegistry()
    site = (m.TARGET, m.METHOD)
    calls = Counter(m.CALLS, "", (*site, m.CODE, m.OUTCOME), registry=theirs)
    attempts = Counter(m.ATTEMPTS, "", (*site, m.CODE), registry=theirs)
    duration = Histogram(
        m.CALL_DURATION, "", (*site, m.OUTCOME), buckets=DEFAULT_BUCKETS, registry=theirs
    )
    for d in DURATIONS:
        attempts.labels("t", "/a.B/C", "OK").inc()
        calls.labels("t", "/a.B/C", "OK", "success").inc()
        duration.labels("t", "/a.B/C", "success").observe(d)

    assert _samples(ours) == _samples(theirs)


def test_failures_rejections_and_breaker_changes() -> None:
    registry = CollectorRegistry()
    listener = resilience.PrometheusListener(registry=registry)
    listener(AttemptEnded(SITE, 1, "UNAVAILABLE", 0.0, 0.01, 2.0))
    listener(RetryScheduled(SITE, 1, "UNAVAILABLE", 0.05, False))
    listener(BreakerStateChanged("t", "", "closed", "open"))
    listener(BreakerRejected(SITE, 2, "open", 4.0))
    listener(CallEnded(SITE, "UNAVAILABLE", 1, 0.06, "breaker_open"))
    sample = registry.get_sample_value
    assert sample(m.ATTEMPTS, {**LABELS, "code": "UNAVAILABLE"}) == 1
    assert sample(m.RETRIES, {**LABELS, "code": "UNAVAILABLE"}) == 1
    assert sample(m.REJECTIONS, {**LABELS, "outcome": "breaker_open"}) == 1
    assert sample(m.CALLS, {**LABELS, "code": "UNAVAILABLE", "outcome": "breaker_open"}) == 1
    assert sample(f"{m.CALL_DURATION}_count", {**LABELS, "outcome": "breaker_open"}) == 1
    assert sample(m.BREAKER_STATE, {"target": "t", "method": ""}) == 2
    assert sample(m.BREAKER_TRANSITIONS, {"target": "t", "method": "", "outcome": "open"}) == 1


def test_counts_are_exact_across_threads() -> None:
    registry = CollectorRegistry()
    listener = resilience.PrometheusListener(registry=registry)

    def work() -> None:
        for _ in range(2000):
            listener(AttemptEnded(SITE, 1, "OK", 0.0, 0.001, 2.0))
            listener(CallEnded(SITE, "OK", 1, 0.001, "success"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.get_sample_value(m.ATTEMPTS, {**LABELS, "code": "OK"}) == 16_000
    count = registry.get_sample_value(f"{m.CALL_DURATION}_count", {**LABELS, "outcome": "success"})
    assert count == 16_000


def test_one_listener_per_registry() -> None:
    registry = CollectorRegistry()
    resilience.PrometheusListener(registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        resilience.PrometheusListener(registry=registry)


def test_call_succeeded_exports_what_the_event_pair_does() -> None:
    pair, shortcut = CollectorRegistry(), CollectorRegistry()
    by_events = resilience.PrometheusListener(registry=pair)
    by_call = resilience.PrometheusListener(registry=shortcut)
    for d in DURATIONS:
        by_events(AttemptEnded(SITE, 1, "OK", 5.0, d, 2.0))
        by_events(CallEnded(SITE, "OK", 1, d, "success"))
        by_call.call_succeeded(SITE, 5.0, d, 2.0)
    assert _samples(shortcut) == _samples(pair)
