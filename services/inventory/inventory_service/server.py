"""Wires the inventory store, its read cache and the servicer into a meshkit server."""

from __future__ import annotations

import redis

from inventory_service.cache import CacheOptions, ItemCache, redis_breaker
from inventory_service.config import Settings
from inventory_service.domain import CATALOG
from inventory_service.metrics import cache_metrics
from inventory_service.servicer import SERVICE_NAME, InventoryServicer
from inventory_service.store import SCHEMA, InventoryStore
from mesh.inventory.v1 import inventory_pb2_grpc
from meshkit.redis_client import connect_unretried
from meshkit.server import RunningServer, ServerOptions, build_server
from meshkit.sqlite import Database


def cache_client(url: str, timeout_s: float) -> redis.Redis:
    """The cache's own client, not meshkit.redis_client's default: a read cache waits far less
    than 0.5 s for Redis, and never retries: the cache's breaker decides when Redis is worth
    another try."""
    return connect_unretried(url, timeout_s=timeout_s, connect_timeout_s=timeout_s)


def cache_options(settings: Settings) -> CacheOptions:
    return CacheOptions(
        ttl_s=settings.cache_ttl_s,
        negative_ttl_s=settings.cache_negative_ttl_s,
        breaker=redis_breaker(settings.redis_backoff_s),
    )


def serve(settings: Settings) -> RunningServer:
    """Opens (and on first start seeds) the database, then starts serving.

    Health is SQLite only: Redis is just a cache here, and reads and reservations
    keep working without it.
    """
    db = Database(settings.db_path, SCHEMA)
    store = InventoryStore(db)
    store.seed(CATALOG, settings.seed_stock)
    servicer = InventoryServicer(store)
    client: redis.Redis | None = None
    if settings.cache:
        client = cache_client(settings.redis_url, settings.cache_redis_timeout_ms / 1000)
        cache = ItemCache(client, store, options=cache_options(settings), metrics=cache_metrics())
        store.on_change.append(cache.invalidate)
        # Another process may have changed the file while we were down: never trust older entries.
        cache.invalidate_all()
        servicer = InventoryServicer(store, cache)
    running = build_server(
        ServerOptions.of(settings),
        service_names=[SERVICE_NAME],
        registrations=[
            lambda server: inventory_pb2_grpc.add_InventoryServiceServicer_to_server(
                servicer, server
            )
        ],
        checks={"sqlite": db.ping},
    )
    if client is not None:
        running.on_stop.append(client.close)
    return running
