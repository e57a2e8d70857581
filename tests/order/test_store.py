"""The orders table against a real SQLite file."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from meshkit.ids import new_id
from meshkit.sqlite import Database
from order_service.domain import Line, Money, NewOrder, Status, Step, new_order
from order_service.store import SCHEMA, Cursor, DuplicateRequest, OrderStore


@pytest.fixture
def store(tmp_path: Path) -> OrderStore:
    ticks = itertools.count(1_000_000)
    return OrderStore(Database(tmp_path / "order.db", SCHEMA), clock=lambda: next(ticks))


def _new(request_id: str = "req-1", customer_id: str = "cust-1") -> NewOrder:
    return NewOrder(
        customer_id=customer_id,
        lines=(Line("SKU-0001", 2), Line("SKU-0002", 1)),
        request_id=request_id,
    )


def test_insert_get_and_by_request_id_round_trip(store: OrderStore) -> None:
    order = store.insert(new_order(new_id("ord"), _new()))
    assert order.create_time_us == order.update_time_us > 0
    assert store.get(order.order_id) == order
    assert store.by_request_id("req-1") == order
    assert store.get(new_id("ord")) is None


def test_request_id_is_unique(store: OrderStore) -> None:
    store.insert(new_order(new_id("ord"), _new()))
    with pytest.raises(DuplicateRequest):
        store.insert(new_order(new_id("ord"), _new()))


def test_save_persists_progress_but_never_reopens_a_finished_order(store: OrderStore) -> None:
    order = store.insert(new_order(new_id("ord"), _new()))
    charged = replace(order, step=Step.CHARGE, reservation_id="res_1", total=Money("USD", 100))
    saved = store.save(charged)
    assert store.get(order.order_id) == saved
    assert saved.update_time_us > order.update_time_us
    failed = store.save(replace(saved, status=Status.FAILED, step=Step.DONE, failure_reason="x"))
    assert store.save(replace(saved, step=Step.COMMIT)) == failed


def test_pages_are_newest_first_and_filter_by_customer(store: OrderStore) -> None:
    ids = [
        store.insert(new_order(new_id("ord"), _new(f"r{i}", f"c{i % 2}"))).order_id
        for i in range(5)
    ]
    assert [o.order_id for o in store.page(customer_id="", limit=10, after=None)] == ids[::-1]
    first = store.page(customer_id="c0", limit=2, after=None)
    assert [o.order_id for o in first] == [ids[4], ids[2]]
    rest = store.page(
        customer_id="c0", limit=2, after=Cursor(first[-1].create_time_us, first[-1].order_id)
    )
    assert [o.order_id for o in rest] == [ids[0]]


def test_pending_lists_only_idle_pending_orders(store: OrderStore) -> None:
    idle = store.insert(new_order(new_id("ord"), _new("r1")))
    done = store.insert(new_order(new_id("ord"), _new("r2")))
    store.save(replace(done, status=Status.FAILED, step=Step.DONE))
    assert [o.order_id for o in store.pending(idle_for_us=0, limit=10)] == [idle.order_id]
    assert store.pending(idle_for_us=10**9, limit=10) == []
