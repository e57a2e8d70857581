"""Wires the inventory store and servicer into a meshkit server."""

from __future__ import annotations

from inventory_service.cache import ItemCache
from inventory_service.config import Settings
from inventory_service.domain import CATALOG
from inventory_service.servicer import SERVICE_NAME, InventoryServicer
from inventory_service.store import SCHEMA, InventoryStore
from mesh.inventory.v1 import inventory_pb2_grpc
from meshkit import redis_client
from meshkit.server import RunningServer, ServerOptions, build_server
from meshkit.sqlite import Database


def serve(settings: Settings) -> RunningServer:
    """Opens (and on first start seeds) the database, then starts serving.

    Health is SQLite only: Redis is just a cache here, and reads and reservations
    keep working without it.
    """
    db = Database(settings.db_path, SCHEMA)
    redis = redis_client.connect(settings.redis_url)
    cache = ItemCache(redis, ttl_s=settings.cache_ttl_s, backoff_s=settings.redis_backoff_s)
    store = InventoryStore(db, cache)
    store.seed(CATALOG, settings.seed_stock)
    # Another process may have changed the file while we were down: never trust older entries.
    cache.invalidate()
    servicer = InventoryServicer(store)
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
    running.on_stop.append(redis.close)
    return running
