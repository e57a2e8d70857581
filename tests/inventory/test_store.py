"""The store against real SQLite and a real Redis: transactions and the generation-keyed cache."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from inventory_service.cache import ItemCache
from inventory_service.domain import CATALOG, ReserveCommand, parse_reserve
from inventory_service.store import SCHEMA, InventoryStore
from meshkit import redis_client
from meshkit.ids import new_id
from meshkit.sqlite import Database
from meshkit.testing import free_port, redis_server

BACKOFF_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "inventory.db", SCHEMA)


def _cache(url: str, clock: FakeClock) -> ItemCache:
    return ItemCache(redis_client.connect(url), ttl_s=30, backoff_s=BACKOFF_S, clock=clock)


def _store(db: Database, cache: ItemCache | None) -> InventoryStore:
    store = InventoryStore(db, cache)
    store.seed(CATALOG[:3], 5)
    return store


def _reserve(sku: str, quantity: int) -> ReserveCommand:
    return parse_reserve(new_id("ord"), [(sku, quantity)])


def _set_available_behind_the_services_back(db: Database, sku: str, available: int) -> None:
    with sqlite3.connect(db.path) as conn:
        conn.execute("UPDATE items SET available = ? WHERE sku = ?", (available, sku))


def _available(store: InventoryStore, sku: str) -> int:
    item = store.get_item(sku)
    assert item is not None
    return item.available


@pytest.fixture
def redis_admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_seed_adds_missing_skus_and_keeps_existing_stock(db: Database) -> None:
    store = InventoryStore(db)
    assert store.seed(CATALOG[:2], 7) == 2
    store.reserve(_reserve("SKU-0001", 3))
    assert store.seed(CATALOG[:3], 7) == 1
    assert [_available(store, sku) for sku in ("SKU-0001", "SKU-0002", "SKU-0003")] == [4, 7, 7]


def test_reads_are_cached_under_the_generation_and_invalidated_by_stock_changes(
    db: Database, redis_url: str, redis_admin: redis.Redis, clock: FakeClock
) -> None:
    cache = _cache(redis_url, clock)
    store = _store(db, cache)
    assert _available(store, "SKU-0001") == 5
    generation = redis_admin.get(cache.generation_key)
    assert isinstance(generation, bytes)
    key = cache.key(generation.decode(), "item:SKU-0001")
    assert redis_admin.exists(key)
    assert 0 < redis_admin.ttl(key) <= 30

    _set_available_behind_the_services_back(db, "SKU-0001", 3)
    assert _available(store, "SKU-0001") == 5, "second read is served from Redis"

    reservation = store.reserve(_reserve("SKU-0001", 1))
    assert _available(store, "SKU-0001") == 2, "reserve bumped the generation"
    store.release(reservation.reservation_id)
    assert _available(store, "SKU-0001") == 3, "release bumped the generation"
    store.commit(store.reserve(_reserve("SKU-0001", 3)).reservation_id)
    assert _available(store, "SKU-0001") == 0


def test_a_read_that_races_a_write_cannot_cache_a_stale_value(
    db: Database, redis_url: str, clock: FakeClock
) -> None:
    cache = _cache(redis_url, clock)
    store = _store(db, cache)

    def load_then_lose_the_race() -> object:
        stale = dict(db.read().execute("SELECT * FROM items WHERE sku = 'SKU-0002'").fetchone())
        store.reserve(_reserve("SKU-0002", 4))  # commits and bumps before the reader stores
        return stale

    assert cache.read_through("item:SKU-0002", load_then_lose_the_race)["available"] == 5
    assert _available(store, "SKU-0002") == 1


def test_a_lost_generation_counter_does_not_revive_old_entries(
    db: Database, redis_url: str, redis_admin: redis.Redis, clock: FakeClock
) -> None:
    cache = _cache(redis_url, clock)
    store = _store(db, cache)
    assert _available(store, "SKU-0003") == 5
    redis_admin.delete(cache.generation_key)  # e.g. evicted under allkeys-lru
    _set_available_behind_the_services_back(db, "SKU-0003", 2)
    assert _available(store, "SKU-0003") == 2


def test_a_dead_redis_is_skipped_during_the_back_off_then_used_again(
    db: Database, clock: FakeClock
) -> None:
    port = free_port()
    cache = _cache(f"redis://127.0.0.1:{port}/0", clock)
    store = _store(db, cache)
    assert _available(store, "SKU-0001") == 5
    assert cache.degraded

    with redis_server(port) as server:
        client = server.client()
        assert _available(store, "SKU-0001") == 5
        assert client.dbsize() == 0, "no Redis call while backing off"
        clock.now += BACKOFF_S + 0.1
        assert _available(store, "SKU-0001") == 5
        assert not cache.degraded
        assert client.keys("inventory:cache:*:item:SKU-0001")
        client.close()


def test_an_invalidation_missed_while_redis_failed_is_paid_before_the_cache_is_read(
    db: Database, clock: FakeClock
) -> None:
    with redis_server() as server:
        client = server.client()
        cache = _cache(server.url, clock)
        store = _store(db, cache)
        assert _available(store, "SKU-0001") == 5  # now cached under the current generation

        client.acl_setuser("default", enabled=True, categories=["-@scripting"])  # scripts fail
        store.reserve(_reserve("SKU-0001", 1))  # commits; its generation bump fails
        assert cache.degraded
        assert _available(store, "SKU-0001") == 4, "degraded reads come from SQLite"

        client.acl_setuser("default", enabled=True, categories=["+@all"])
        clock.now += BACKOFF_S + 0.1
        assert _available(store, "SKU-0001") == 4, "the owed bump hid the stale entry"
        assert not cache.degraded, "that read went through Redis"
        client.close()
