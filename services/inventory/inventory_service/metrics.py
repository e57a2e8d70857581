"""The cache's counters (names in :mod:`inventory_service.metric_names`)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from inventory_service import metric_names as m
from meshkit.process_wide import process_wide


class CacheMetrics:
    """Counters of the read cache; tests pass a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._lookups = Counter(
            m.LOOKUPS, "Cache lookups by kind and result", (m.KIND, m.RESULT), registry=registry
        )
        self._loads = Counter(
            m.LOADS, "SQLite queries made by the cache, by kind", (m.KIND,), registry=registry
        )
        self._waits = Counter(
            m.LEASE_WAITS,
            "Lookups that waited for another reader's rebuild, by kind and outcome",
            (m.KIND, m.OUTCOME),
            registry=registry,
        )
        self._errors = Counter(
            m.REDIS_ERRORS,
            "Failed Redis calls of the cache, by operation",
            (m.OPERATION,),
            registry=registry,
        )

    def lookup(self, kind: str, result: str) -> None:
        self._lookups.labels(kind, result).inc()

    def load(self, kind: str) -> None:
        self._loads.labels(kind).inc()

    def waited(self, kind: str, outcome: str) -> None:
        self._waits.labels(kind, outcome).inc()

    def redis_error(self, operation: str) -> None:
        self._errors.labels(operation).inc()


cache_metrics = process_wide(CacheMetrics)
"""The process-wide counters (one registry; tests start several servers)."""
