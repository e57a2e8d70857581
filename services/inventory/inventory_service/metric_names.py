"""Every metric and label name the inventory service exports itself, in one place (rules,
dashboards, tests). The RED metrics of its RPCs come from meshkit.server."""

from __future__ import annotations

# Labels: low cardinality only, never a SKU.
KIND = "kind"  # what was looked up: "item" (GetItem, and a page's items) or "page" (its SKUs)
RESULT = "result"  # how a lookup was answered: one of the RESULT_* values below
OUTCOME = "outcome"  # how a wait for another reader's rebuild ended: one of the WAIT_* values
OPERATION = "operation"  # the cache's Redis call that failed: "read", "store" or "invalidate"

RESULT_HIT = "hit"  # a fresh entry
RESULT_NEGATIVE_HIT = "negative_hit"  # a fresh "no such SKU" entry
RESULT_STALE = "stale"  # an entry past its TTL, served while another reader rebuilds it
RESULT_MISS = "miss"  # nothing usable: this reader loaded from SQLite
RESULT_BYPASS = "bypass"  # Redis failed or is skipped (breaker open): read from SQLite

WAIT_FILLED = "filled"  # the rebuilt (or a stale) entry appeared
WAIT_TOOK_OVER = "took_over"  # the rebuilder gave up its lease and this reader took it
WAIT_TIMED_OUT = "timed_out"  # the wait bound passed: this reader loaded without storing

#: Cache lookups by kind and result; every lookup is counted once.
LOOKUPS = "inventory_cache_lookups_total"
#: SQLite queries the cache made to fill or bypass it, by kind (one query per page's missing
#: items, however many they are).
LOADS = "inventory_cache_loads_total"
#: Lookups that found another reader rebuilding the entry and no stale copy, so they waited,
#: by kind and outcome.
LEASE_WAITS = "inventory_cache_lease_waits_total"
#: Redis calls of the cache that failed (timeout, refused, script error), by operation.
REDIS_ERRORS = "inventory_cache_redis_errors_total"
