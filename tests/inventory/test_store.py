"""The store against real SQLite: seeding, and the item changes it tells its listeners of."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory_service.domain import CATALOG, ItemsChanged, PageQuery, parse_reserve
from inventory_service.store import SCHEMA, InventoryStore
from meshkit.ids import new_id
from meshkit.sqlite import Database


@pytest.fixture
def store(tmp_path: Path) -> InventoryStore:
    return InventoryStore(Database(tmp_path / "inventory.db", SCHEMA))


def _available(store: InventoryStore, sku: str) -> int:
    item = store.get_item(sku)
    assert item is not None
    return item.available


def test_seed_adds_missing_skus_and_keeps_existing_stock(store: InventoryStore) -> None:
    assert store.seed(CATALOG[:2], 7) == 2
    store.reserve(parse_reserve(new_id("ord"), [("SKU-0001", 3)]))
    assert store.seed(CATALOG[:3], 7) == 1
    assert [_available(store, sku) for sku in ("SKU-0001", "SKU-0002", "SKU-0003")] == [4, 7, 7]


def test_reads(store: InventoryStore) -> None:
    store.seed(CATALOG[:3], 5)
    assert store.get_item("NOPE-1") is None
    assert sorted(store.get_items(["SKU-0003", "SKU-0001", "NOPE-1"])) == ["SKU-0001", "SKU-0003"]
    items, more = store.list_items(PageQuery(size=2, after="SKU-0001"))
    assert ([item.sku for item in items], more) == (["SKU-0002", "SKU-0003"], False)
    assert sorted(store.all_skus()) == ["SKU-0001", "SKU-0002", "SKU-0003"]


def test_listeners_hear_the_skus_each_committed_write_changed(store: InventoryStore) -> None:
    heard: list[ItemsChanged] = []
    store.on_change.append(heard.append)
    store.seed(CATALOG[:3], 5)
    store.seed(CATALOG[:3], 5)  # nothing new: nothing to hear
    reservation = store.reserve(parse_reserve(new_id("ord"), [("SKU-0001", 1), ("SKU-0002", 1)]))
    store.commit(reservation.reservation_id)  # stock moved at Reserve: nothing changes now
    released = store.reserve(parse_reserve(new_id("ord"), [("SKU-0003", 2)]))
    store.release(released.reservation_id)
    store.release(released.reservation_id)  # an idempotent repeat changes nothing
    with pytest.raises(Exception, match="out of stock"):
        store.reserve(parse_reserve(new_id("ord"), [("SKU-0001", 99)]))
    assert heard == [
        ItemsChanged(frozenset({"SKU-0001", "SKU-0002", "SKU-0003"}), created=True),
        ItemsChanged(frozenset({"SKU-0001", "SKU-0002"})),
        ItemsChanged(frozenset({"SKU-0003"})),
        ItemsChanged(frozenset({"SKU-0003"})),
    ]
