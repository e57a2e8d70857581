"""Inventory settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshkit.settings import (
    DEFAULT_HOST,
    DEFAULT_REDIS_URL,
    SettingsError,
    data_dir,
    env_float,
    env_int,
    env_port,
    env_str,
    redis_url,
)
from meshkit.tls import WorkloadTls, workload_tls

DEFAULT_PORT = 50052
DEFAULT_METRICS_PORT = 9102
#: Threads serving calls. `python -m bench server-model` shows a bare server is far faster with
#: 4 threads than 32 on 2 cores (GIL contention), but `python -m bench mesh` measured no
#: CreateOrder throughput gain from 4 here, so the default stays generous (no queueing).
DEFAULT_MAX_WORKERS = 32
MAX_MAX_WORKERS = 256
DEFAULT_SEED_STOCK = 100
MAX_SEED_STOCK = 1_000_000
#: Short enough that an invalidation lost while Redis was unreachable heals quickly.
DEFAULT_CACHE_TTL_S = 30
MAX_CACHE_TTL_S = 86_400
#: How long reads skip Redis after it failed, so a dead Redis costs one timeout, not one per call.
DEFAULT_REDIS_BACKOFF_S = 2.0
DB_FILENAME = "inventory.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where inventory listens and keeps its data; ``metrics_port=None`` serves no /metrics."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    metrics_port: int | None = DEFAULT_METRICS_PORT
    max_workers: int = DEFAULT_MAX_WORKERS
    data_dir: Path
    redis_url: str = DEFAULT_REDIS_URL
    seed_stock: int = DEFAULT_SEED_STOCK
    cache_ttl_s: int = DEFAULT_CACHE_TTL_S
    redis_backoff_s: float = DEFAULT_REDIS_BACKOFF_S
    #: Serve only mTLS, as spiffe://mesh.local/inventory; None serves plaintext (MESH_MTLS=0).
    tls: WorkloadTls | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_workers <= MAX_MAX_WORKERS:
            raise SettingsError(
                f"INVENTORY_MAX_WORKERS={self.max_workers}: must be in 1..{MAX_MAX_WORKERS}"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if not 0 <= self.seed_stock <= MAX_SEED_STOCK:
            raise SettingsError(f"seed_stock must be in 0..{MAX_SEED_STOCK}, got {self.seed_stock}")
        if not 1 <= self.cache_ttl_s <= MAX_CACHE_TTL_S:
            raise SettingsError(
                f"cache_ttl_s must be in 1..{MAX_CACHE_TTL_S}, got {self.cache_ttl_s}"
            )
        if self.redis_backoff_s < 0:
            raise SettingsError(f"redis_backoff_s must be >= 0, got {self.redis_backoff_s}")

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            host=env_str("MESH_HOST", DEFAULT_HOST, env=env),
            port=env_port("INVENTORY_PORT", DEFAULT_PORT, env=env),
            metrics_port=env_port("INVENTORY_METRICS_PORT", DEFAULT_METRICS_PORT, env=env),
            max_workers=env_int(
                "INVENTORY_MAX_WORKERS", DEFAULT_MAX_WORKERS, lo=1, hi=MAX_MAX_WORKERS, env=env
            ),
            data_dir=data_dir(env),
            redis_url=redis_url(env),
            seed_stock=env_int(
                "INVENTORY_SEED_STOCK", DEFAULT_SEED_STOCK, lo=0, hi=MAX_SEED_STOCK, env=env
            ),
            cache_ttl_s=env_int(
                "INVENTORY_CACHE_TTL_S", DEFAULT_CACHE_TTL_S, lo=1, hi=MAX_CACHE_TTL_S, env=env
            ),
            redis_backoff_s=env_float(
                "INVENTORY_REDIS_BACKOFF_S", DEFAULT_REDIS_BACKOFF_S, lo=0, hi=60, env=env
            ),
            tls=workload_tls("inventory", env),
        )
