"""Inventory settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshkit import settings
from meshkit.tls import WorkloadTls, workload_tls

PORT = settings.port("INVENTORY_PORT", 50052, doc="inventory's gRPC port (mTLS, Envoy only)")
METRICS_PORT = settings.port("INVENTORY_METRICS_PORT", 9102, doc="inventory's Prometheus /metrics")
#: `python -m bench server-model` shows a bare server is far faster with 4 threads than 32 on
#: 2 cores (GIL contention), but `python -m bench mesh` measured no CreateOrder throughput gain
#: from 4 here, so the default stays generous (no queueing).
MAX_WORKERS = settings.integer(
    "INVENTORY_MAX_WORKERS", 32, lo=1, hi=256, doc="threads serving inventory's calls"
)
SEED_STOCK = settings.integer(
    "INVENTORY_SEED_STOCK",
    100,
    lo=0,
    hi=1_000_000,
    doc="stock of every SKU in a new catalog (24 SKUs, SKU-0001...)",
)
CACHE = settings.flag(
    "INVENTORY_CACHE", True, doc="read GetItem/ListItems through the Redis cache (0: SQLite only)"
)
#: Writes drop exactly the entries they change, so this bounds only what a write made while
#: Redis was out of this process's reach could leave; each TTL is jittered by 15%.
CACHE_TTL_S = settings.integer(
    "INVENTORY_CACHE_TTL_S",
    30,
    lo=1,
    hi=86_400,
    doc="lifetime of a cached GetItem/ListItems answer (±15%)",
)
CACHE_NEGATIVE_TTL_S = settings.number(
    "INVENTORY_CACHE_NEGATIVE_TTL_S",
    5.0,
    lo=0.1,
    hi=3600,
    doc='lifetime of a cached "no such SKU" (±15%)',
)
#: A GetItem from SQLite takes well under a millisecond, so a Redis call this slow has failed
#: (three in a row open the breaker). 50 ms was measured to trip it on a starved 2-core machine
#: (load average 20: `python -m bench cache`), which let every miss through to SQLite.
CACHE_REDIS_TIMEOUT_MS = settings.integer(
    "INVENTORY_CACHE_REDIS_TIMEOUT_MS",
    100,
    lo=1,
    hi=5000,
    doc="socket timeout of the cache's Redis calls (no retries)",
)
#: So a dead Redis costs one timeout, not one per call; doubles up to 30 s while it stays down.
REDIS_BACKOFF_S = settings.number(
    "INVENTORY_REDIS_BACKOFF_S",
    2.0,
    lo=0.01,
    hi=60,
    doc="after a Redis error, reads skip the cache (then one probe)",
)
DB_FILENAME = "inventory.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where inventory listens and keeps its data; ``metrics_port=None`` serves no /metrics."""

    host: str = settings.HOST.field()
    port: int = PORT.field()
    metrics_port: int | None = METRICS_PORT.field()
    max_workers: int = MAX_WORKERS.field()
    data_dir: Path = settings.DATA_DIR.required()
    redis_url: str = settings.REDIS_URL.field()
    seed_stock: int = SEED_STOCK.field()
    cache: bool = CACHE.field()
    cache_ttl_s: int = CACHE_TTL_S.field()
    cache_negative_ttl_s: float = CACHE_NEGATIVE_TTL_S.field()
    cache_redis_timeout_ms: int = CACHE_REDIS_TIMEOUT_MS.field()
    redis_backoff_s: float = REDIS_BACKOFF_S.field()
    #: Serve only mTLS, as spiffe://mesh.local/inventory; None serves plaintext (MESH_MTLS=0).
    tls: WorkloadTls | None = None

    def __post_init__(self) -> None:
        settings.check_fields(self)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return settings.from_env(cls, env, tls=workload_tls("inventory", env))
