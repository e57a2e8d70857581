"""The read cache against a real redis-server and real SQLite; SQLite reads counted by a wrapper."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from inventory_service import cache as cache_module
from inventory_service import metric_names as m
from inventory_service.cache import CacheOptions, ItemCache, item_keys, pages_key, redis_breaker
from inventory_service.domain import CATALOG, CatalogEntry, Item, PageQuery, parse_reserve
from inventory_service.metrics import CacheMetrics
from inventory_service.server import cache_client
from inventory_service.store import SCHEMA, InventoryStore
from meshkit.ids import new_id
from meshkit.sqlite import Database
from meshkit.testing import RedisServer, redis_server, wait_until
from resilience.testing import FakeClock, ScriptedRng

OPTIONS = CacheOptions(ttl_s=30, negative_ttl_s=5, jitter=0.15, stale_s=5)
#: Generous, so a slow reply on a busy machine is no failure: only the hung Redis times out.
TIMEOUT_S = 5.0
HUNG_TIMEOUT_S = 0.25


class CountingCatalog:
    """The store, counting its reads; ``before_return`` runs after a read, before it returns."""

    def __init__(self, store: InventoryStore) -> None:
        self.store = store
        self.loads: list[str] = []
        self.before_return: Callable[[], None] | None = None

    def _done(self, what: str) -> None:
        self.loads.append(what)
        hook, self.before_return = self.before_return, None
        if hook is not None:
            hook()

    def get_item(self, sku: str) -> Item | None:
        item = self.store.get_item(sku)
        self._done(f"item:{sku}")
        return item

    def get_items(self, skus: Collection[str]) -> dict[str, Item]:
        items = self.store.get_items(skus)
        self._done("items:" + ",".join(sorted(skus)))
        return items

    def list_items(self, query: PageQuery) -> tuple[list[Item], bool]:
        page = self.store.list_items(query)
        self._done(f"page:{query.after}:{query.size}")
        return page

    def all_skus(self) -> list[str]:
        return self.store.all_skus()


class Harness:
    def __init__(
        self, tmp_path: Path, url: str, timeout_s: float = TIMEOUT_S, **kwargs: object
    ) -> None:
        self.db = Database(tmp_path / "inventory.db", SCHEMA)
        self.store = InventoryStore(self.db)
        self.store.seed(CATALOG[:3], 5)
        self.catalog = CountingCatalog(self.store)
        self.registry = CollectorRegistry()
        self.client = cache_client(url, timeout_s)
        options = kwargs.pop("options", OPTIONS)
        assert isinstance(options, CacheOptions)
        self.cache = ItemCache(
            self.client,
            self.catalog,
            options=options,
            metrics=CacheMetrics(self.registry),
            **kwargs,  # type: ignore[arg-type]  # clock and rng, as each test needs
        )
        self.store.on_change.append(self.cache.invalidate)

    def available(self, sku: str) -> int:
        item = self.cache.get_item(sku)
        assert item is not None
        return item.available

    def reserve(self, sku: str, quantity: int) -> str:
        command = parse_reserve(new_id("ord"), [(sku, quantity)])
        return self.store.reserve(command).reservation_id

    def set_behind_the_caches_back(self, sku: str, available: int) -> None:
        with sqlite3.connect(self.db.path) as conn:
            conn.execute("UPDATE items SET available = ? WHERE sku = ?", (available, sku))

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def lookups(self, result: str, kind: str = cache_module.KIND_ITEM) -> float:
        return self.count(m.LOOKUPS, kind=kind, result=result)


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def harness(tmp_path: Path, redis_url: str) -> Harness:
    return Harness(tmp_path, redis_url)


def test_a_hot_key_is_loaded_once(harness: Harness) -> None:
    assert [harness.available("SKU-0001") for _ in range(5)] == [5] * 5
    assert harness.catalog.loads == ["item:SKU-0001"]
    assert (harness.lookups(m.RESULT_MISS), harness.lookups(m.RESULT_HIT)) == (1, 4)


def test_an_unknown_sku_is_cached_as_unknown(harness: Harness, admin: redis.Redis) -> None:
    assert [harness.cache.get_item("NOPE-1") for _ in range(3)] == [None] * 3
    assert harness.catalog.loads == ["item:NOPE-1"]
    assert harness.lookups(m.RESULT_NEGATIVE_HIT) == 2
    entry, _ = item_keys("NOPE-1")
    assert admin.get(entry) == cache_module.NEGATIVE
    assert 0 < admin.pttl(entry) <= (5 * 1.15 + 5) * 1000


def test_a_sku_created_after_it_was_cached_as_unknown_is_seen_at_once(harness: Harness) -> None:
    assert harness.cache.get_item("NEW-1") is None
    harness.store.seed((CatalogEntry("NEW-1", "New", 100),), 9)
    assert harness.available("NEW-1") == 9


def test_a_sku_created_while_a_reader_loads_unknown_is_not_hidden(harness: Harness) -> None:
    def create_it() -> None:  # commits after the reader found nothing, before it stores that
        harness.store.seed((CatalogEntry("NEW-2", "New", 100),), 4)

    harness.catalog.before_return = create_it
    assert harness.cache.get_item("NEW-2") is None, "the reader's own answer was concurrent"
    assert harness.available("NEW-2") == 4


class SleepRecordingClock:
    """The real clock, remembering which threads have slept (waited for a rebuild)."""

    def __init__(self) -> None:
        self.sleepers: set[int] = set()
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleepers.add(threading.get_ident())
        time.sleep(seconds)

    async def sleep_async(self, seconds: float) -> None:
        raise NotImplementedError


def test_concurrent_misses_on_one_key_load_it_once(tmp_path: Path, redis_url: str) -> None:
    readers = 16
    clock = SleepRecordingClock()
    harness = Harness(tmp_path, redis_url, options=CacheOptions(wait_s=60, lease_s=60), clock=clock)
    everyone_waits = threading.Event()
    harness.catalog.before_return = lambda: everyone_waits.wait(30)
    answers: list[int] = []

    def read() -> None:
        answers.append(harness.available("SKU-0002"))

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: len(clock.sleepers) == readers - 1, timeout_s=30, what="every other reader waits"
    )
    everyone_waits.set()
    for thread in threads:
        thread.join(30)
    assert answers == [5] * readers
    assert harness.catalog.loads == ["item:SKU-0002"]
    assert harness.count(m.LEASE_WAITS, kind="item", outcome=m.WAIT_FILLED) == readers - 1


def test_a_waiter_loads_itself_when_the_rebuild_takes_too_long(
    tmp_path: Path, redis_url: str, admin: redis.Redis
) -> None:
    clock = FakeClock()
    harness = Harness(tmp_path, redis_url, clock=clock)
    _, lease = item_keys("SKU-0001")
    admin.set(lease, "another-reader", px=60_000)
    assert harness.available("SKU-0001") == 5
    assert harness.catalog.loads == ["item:SKU-0001"]
    assert sum(clock.sleeps) >= OPTIONS.wait_s, "it waited its bound, no longer"
    assert harness.count(m.LEASE_WAITS, kind="item", outcome=m.WAIT_TIMED_OUT) == 1
    assert admin.get(lease) == b"another-reader", "it took nobody's lease and stored nothing"


def test_a_stale_copy_is_served_while_another_reader_rebuilds(
    harness: Harness, admin: redis.Redis
) -> None:
    assert harness.available("SKU-0003") == 5
    entry, lease = item_keys("SKU-0003")
    admin.pexpire(entry, 4_000)  # its TTL has passed: 4 s of its 5 s stale window are left
    harness.set_behind_the_caches_back("SKU-0003", 2)
    admin.set(lease, "another-reader", px=60_000)
    assert harness.available("SKU-0003") == 5, "the stale copy, without waiting"
    assert harness.lookups(m.RESULT_STALE) == 1
    assert harness.catalog.loads == ["item:SKU-0003"]

    admin.delete(lease)  # the other reader died: the next reader takes the lease and rebuilds
    assert harness.available("SKU-0003") == 2
    assert harness.available("SKU-0003") == 2
    assert harness.catalog.loads == ["item:SKU-0003"] * 2
    assert admin.pttl(entry) > OPTIONS.stale_s * 1000, "fresh again"


def test_ttls_are_jittered_within_bounds(tmp_path: Path, redis_url: str) -> None:
    lowest, highest = ScriptedRng([0.0]), ScriptedRng([1.0 - 1e-9])
    assert OPTIONS.lifetime_ms(30, lowest) == (30 * 0.85 + 5) * 1000
    assert OPTIONS.lifetime_ms(30, highest) == round((30 * 1.15 + 5) * 1000)

    harness = Harness(tmp_path, redis_url, rng=random.Random(7))
    admin = redis.Redis.from_url(redis_url)
    skus = ("SKU-0001", "SKU-0002", "SKU-0003")
    for sku in skus:
        harness.available(sku)
    ttls = [admin.pttl(item_keys(sku)[0]) for sku in skus]
    admin.close()
    assert all((30 * 0.85 + 5) * 1000 - 100 < ttl <= (30 * 1.15 + 5) * 1000 for ttl in ttls)
    assert len(set(ttls)) == len(ttls), "entries written together expire apart"


def test_a_write_drops_only_the_skus_it_changed(harness: Harness, admin: redis.Redis) -> None:
    assert (harness.available("SKU-0001"), harness.available("SKU-0002")) == (5, 5)
    harness.reserve("SKU-0001", 2)
    assert not admin.exists(item_keys("SKU-0001")[0])
    assert admin.exists(item_keys("SKU-0002")[0]), "another SKU stays cached"
    assert (harness.available("SKU-0001"), harness.available("SKU-0002")) == (3, 5)
    assert harness.catalog.loads == ["item:SKU-0001", "item:SKU-0002", "item:SKU-0001"]


def test_read_your_writes_through_reserve_release_and_commit(harness: Harness) -> None:
    assert harness.available("SKU-0001") == 5
    reservation_id = harness.reserve("SKU-0001", 1)
    assert harness.available("SKU-0001") == 4
    harness.store.release(reservation_id)
    assert harness.available("SKU-0001") == 5
    harness.store.commit(harness.reserve("SKU-0001", 5))
    assert harness.available("SKU-0001") == 0


def test_a_reader_that_loaded_old_stock_before_a_write_cannot_cache_it(
    harness: Harness, admin: redis.Redis
) -> None:
    # The classic race, in its order: the reader loads, the writer commits and invalidates,
    # then the reader stores what it loaded.
    harness.catalog.before_return = lambda: harness.reserve("SKU-0002", 4) and None
    assert harness.available("SKU-0002") == 5, "the reader's own answer was concurrent"
    assert not admin.exists(item_keys("SKU-0002")[0]), "its store was refused"
    assert harness.available("SKU-0002") == 1


def test_a_write_whose_invalidation_lands_after_the_store_drops_it(
    harness: Harness, admin: redis.Redis
) -> None:
    assert harness.available("SKU-0002") == 5  # the reader stored; now the writer commits
    harness.reserve("SKU-0002", 1)
    assert harness.available("SKU-0002") == 4


def test_a_page_is_assembled_from_item_entries(harness: Harness) -> None:
    query = PageQuery(size=10, after="")
    items, more = harness.cache.list_items(query)
    assert ([item.available for item in items], more) == ([5, 5, 5], False)
    harness.cache.list_items(query)
    harness.reserve("SKU-0002", 3)
    items, _ = harness.cache.list_items(query)
    assert [item.available for item in items] == [5, 2, 5]
    harness.cache.list_items(query)
    assert harness.catalog.loads == [
        "page::10",
        "items:SKU-0001,SKU-0002,SKU-0003",  # the page's SKUs came from the cache, items not yet
        "items:SKU-0002",  # the Reserve dropped one item; the page's SKUs stayed cached
    ]


def test_a_sku_created_while_a_page_loads_is_not_left_out(harness: Harness) -> None:
    query = PageQuery(size=10, after="")
    harness.catalog.before_return = lambda: (
        harness.store.seed((CatalogEntry("SKU-0004", "New", 100),), 1) and None
    )
    assert len(harness.cache.list_items(query)[0]) == 3, "the reader's own answer was concurrent"
    assert [item.sku for item in harness.cache.list_items(query)[0]][-1] == "SKU-0004"


def test_every_key_a_script_touches_is_passed_in_and_shares_one_slot() -> None:
    for script in (
        cache_module.ENTRY_READ,
        cache_module.ENTRY_STORE,
        cache_module.LEASE_RELEASE,
        cache_module.PAGE_READ,
        cache_module.PAGE_STORE,
    ):
        assert ".." not in script, "no key is built inside a script"
        assert "ARGV[1] .." not in script
    for sku in ("SKU-0001", "NOPE-9"):
        entry, lease = item_keys(sku)
        assert key_slot(entry.encode()) == key_slot(lease.encode())
    page_lease = "inventory:cache:{items}:lease:SKU-0020:20"
    assert key_slot(pages_key().encode()) == key_slot(page_lease.encode())


# --- Redis hung or down -----------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _cached_entry(server: RedisServer, sku: str) -> bytes | None:
    client = server.client()
    try:
        value = client.get(item_keys(sku)[0])
        return value if isinstance(value, bytes) else None
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_a_hung_redis_costs_one_timeout_then_reads_come_from_sqlite(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    clock = FakeClock()
    harness = Harness(tmp_path, own_redis.url, HUNG_TIMEOUT_S, clock=clock)
    assert harness.available("SKU-0001") == 5
    own_redis.process.send_signal(signal.SIGSTOP)  # hung: connections accepted, never answered
    try:
        assert [harness.available("SKU-0001") for _ in range(200)] == [5] * 200
        assert harness.cache.redis_state == "open"
        assert harness.count(m.REDIS_ERRORS, operation="read") == 3, "3 timeouts, then skipped"
        assert harness.lookups(m.RESULT_BYPASS) == 200
        reservation_id = harness.reserve("SKU-0001", 2)  # its invalidation is owed
        assert harness.available("SKU-0001") == 3
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    assert _cached_entry(own_redis, "SKU-0001") is not None, "the stale entry is still there"
    clock.advance(redis_breaker(2.0).reset_timeout)
    assert harness.available("SKU-0001") == 3, "the owed invalidation was paid first"
    assert harness.cache.redis_state == "closed"
    assert harness.available("SKU-0001") == 3
    assert harness.lookups(m.RESULT_HIT) == 1
    harness.store.release(reservation_id)
    assert harness.available("SKU-0001") == 5


@pytest.mark.timeout(60)
def test_a_dead_redis_is_skipped_and_used_again_once_back(tmp_path: Path) -> None:
    clock = FakeClock()
    with redis_server() as server:
        port = server.port
        harness = Harness(tmp_path, server.url, HUNG_TIMEOUT_S, clock=clock)
        assert harness.available("SKU-0002") == 5
    # stopped: connections refused
    assert [harness.available("SKU-0002") for _ in range(200)] == [5] * 200
    assert harness.cache.redis_state == "open"
    assert harness.cache.list_items(PageQuery(size=2, after=""))[0][1].available == 5
    clock.advance(2.0)
    assert harness.available("SKU-0002") == 5, "the probe fails: open again, for longer"
    assert harness.cache.redis_state == "open"
    clock.advance(2.0)
    assert harness.cache.redis_state == "open"
    with redis_server(port) as server:
        clock.advance(2.0)
        assert harness.available("SKU-0002") == 5
        assert harness.cache.redis_state == "closed"
        stored = _cached_entry(server, "SKU-0002")
        assert stored is not None
        assert json.loads(stored)[3] == 5


def test_options_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match=r"CacheOptions\.jitter"):
        CacheOptions(jitter=0.9)
    with pytest.raises(ValueError, match=r"CacheOptions\.ttl_s"):
        CacheOptions(ttl_s=0)
