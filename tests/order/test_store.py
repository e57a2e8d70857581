"""The orders table against a real SQLite file."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from meshkit.ids import new_id
from meshkit.sqlite import Database
from order_service.domain import Line, Money, NewOrder, Status, Step, new_order
from order_service.ports import FencedOut
from order_service.store import MIGRATIONS, SCHEMA, Cursor, DuplicateRequest, OrderStore, Stuck


@pytest.fixture
def store(tmp_path: Path) -> OrderStore:
    ticks = itertools.count(1_000_000)
    return OrderStore(
        Database(tmp_path / "order.db", SCHEMA, MIGRATIONS), clock=lambda: next(ticks)
    )


def _new(request_id: str = "req-1", customer_id: str = "cust-1") -> NewOrder:
    return NewOrder(
        customer_id=customer_id,
        lines=(Line("SKU-0001", 2), Line("SKU-0002", 1)),
        request_id=request_id,
    )


def test_insert_get_and_by_request_id_round_trip(store: OrderStore) -> None:
    order = store.insert(new_order(new_id("ord"), _new()), fence=1)
    assert order.create_time_us == order.update_time_us > 0
    assert store.get(order.order_id) == order
    assert store.by_request_id("req-1") == order
    assert store.get(new_id("ord")) is None


def test_request_id_is_unique(store: OrderStore) -> None:
    store.insert(new_order(new_id("ord"), _new()), fence=1)
    with pytest.raises(DuplicateRequest):
        store.insert(new_order(new_id("ord"), _new()), fence=1)


def test_save_persists_progress_but_never_reopens_a_finished_order(store: OrderStore) -> None:
    order = store.insert(new_order(new_id("ord"), _new()), fence=1)
    charged = replace(order, step=Step.CHARGE, reservation_id="res_1", total=Money("USD", 100))
    saved = store.save(charged, fence=1)
    assert store.get(order.order_id) == saved
    assert saved.update_time_us > order.update_time_us
    failed = store.save(
        replace(saved, status=Status.FAILED, step=Step.DONE, failure_reason="x"), fence=1
    )
    assert store.save(replace(saved, step=Step.COMMIT), fence=1) == failed


def test_pages_are_newest_first_and_filter_by_customer(store: OrderStore) -> None:
    ids = [
        store.insert(new_order(new_id("ord"), _new(f"r{i}", f"c{i % 2}")), fence=1).order_id
        for i in range(5)
    ]
    assert [o.order_id for o in store.page(customer_id="", limit=10, after=None)] == ids[::-1]
    first = store.page(customer_id="c0", limit=2, after=None)
    assert [o.order_id for o in first] == [ids[4], ids[2]]
    rest = store.page(
        customer_id="c0", limit=2, after=Cursor(first[-1].create_time_us, first[-1].order_id)
    )
    assert [o.order_id for o in rest] == [ids[0]]


def test_due_pages_through_idle_pending_orders_past_their_retry_time(store: OrderStore) -> None:
    orders = [store.insert(new_order(new_id("ord"), _new(f"r{i}")), fence=1) for i in range(5)]
    done = store.save(replace(orders[1], status=Status.FAILED, step=Step.DONE), fence=1)
    store.mark_stuck(orders[3].order_id, Stuck(runs=1, retry_time_us=done.update_time_us + 50))
    now = store.now_us()

    def due(*, after: tuple[int, str] | None, retry_before_us: int | None = now) -> list[str]:
        page = store.due(idle_since_us=now, retry_before_us=retry_before_us, limit=2, after=after)
        return [o.order_id for o in page]

    first = due(after=None)
    assert first == [orders[0].order_id, orders[2].order_id]
    last = store.get(first[-1])
    assert last is not None
    assert due(after=(last.update_time_us, last.order_id)) == [orders[4].order_id]
    # The stuck one comes back at its retry time, or at once when retry times are ignored.
    everything = store.due(idle_since_us=now, retry_before_us=None, limit=10, after=None)
    assert [o.order_id for o in everything] == [o.order_id for o in orders if o != orders[1]]
    assert store.due(idle_since_us=0, retry_before_us=now, limit=10, after=None) == []


def test_next_due_is_the_first_idle_age_or_retry_time_still_ahead(store: OrderStore) -> None:
    fresh = store.insert(new_order(new_id("ord"), _new("r1")), fence=1)
    stuck = store.insert(new_order(new_id("ord"), _new("r2")), fence=1)
    store.mark_stuck(stuck.order_id, Stuck(runs=1, retry_time_us=fresh.update_time_us + 10**9))
    at = fresh.update_time_us
    assert store.next_due_us(idle_for_us=1_000, after_us=at) == at + 1_000
    # Past the fresh one's age: the stuck one's retry time is next.
    assert store.next_due_us(idle_for_us=1_000, after_us=at + 1_000) == at + 10**9
    assert store.next_due_us(idle_for_us=1_000, after_us=at + 10**9) is None


def test_a_stuck_mark_is_kept_until_the_order_moves(store: OrderStore) -> None:
    order = store.insert(new_order(new_id("ord"), _new()), fence=1)
    assert store.stuck(order.order_id) == Stuck()
    flagged = Stuck(runs=5, retry_time_us=123, attention_reason="RELEASE has failed 5 runs")
    assert store.mark_stuck(order.order_id, flagged)
    assert store.stuck(order.order_id) == flagged
    assert store.attention_reasons([order.order_id, "ord_x"]) == {
        order.order_id: flagged.attention_reason
    }
    assert store.needing_attention() == 1
    assert store.get(order.order_id) == order  # the order itself is as it was

    done = store.save(replace(order, status=Status.FAILED, step=Step.DONE), fence=1)
    assert store.stuck(order.order_id) == Stuck()
    assert store.needing_attention() == 0
    assert not store.mark_stuck(order.order_id, flagged)  # a finished order is never marked
    assert store.get(order.order_id) == done


def test_a_database_from_before_the_stuck_columns_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "order.db"
    first = Database(path, SCHEMA)  # as the first release created the file, with a row
    order = new_order(new_id("ord"), _new())
    with first.write() as conn:
        conn.execute(
            "INSERT INTO orders (order_id, request_id, fingerprint, customer_id, lines,"
            " status, step, create_time, update_time)"
            " VALUES (?, ?, ?, ?, '[]', 'PENDING', 'RESERVE', 1, 1)",
            (order.order_id, order.request_id, order.fingerprint, order.customer_id),
        )
    first.close()

    store = OrderStore(Database(path, SCHEMA, MIGRATIONS))

    stored = store.get(order.order_id)
    assert stored is not None
    assert stored.fence == 0  # every token passes it
    assert store.stuck(order.order_id) == Stuck()
    assert store.mark_stuck(order.order_id, Stuck(runs=1, retry_time_us=1))
    assert store.save(replace(stored, step=Step.COMMIT), fence=1).fence == 1
    # Opening it again (every start-up does) changes nothing.
    again = OrderStore(Database(path, SCHEMA, MIGRATIONS))
    assert again.stuck(order.order_id) == Stuck()  # the save cleared it
    reopened = again.get(order.order_id)
    assert reopened is not None
    assert (reopened.step, reopened.fence) == (Step.COMMIT, 1)


def test_a_write_with_an_older_fencing_token_than_the_rows_is_refused(store: OrderStore) -> None:
    order = store.insert(new_order(new_id("ord"), _new()), fence=1)
    assert (order.fence, store.get(order.order_id)) == (1, order)
    # A runner taking it over stamps its token before its first call...
    taken = store.take(order.order_id, fence=3)
    assert taken is not None
    assert taken.fence == 3
    # ...so the first runner, paused past its lease, can no longer write, and nothing moves.
    with pytest.raises(FencedOut) as refused:
        store.save(replace(order, step=Step.COMMIT), fence=1)
    assert (refused.value.fence, refused.value.stored) == (1, 3)
    with pytest.raises(FencedOut):
        store.delete(order.order_id, fence=2)
    with pytest.raises(FencedOut):
        store.take(order.order_id, fence=2)
    assert store.get(order.order_id) == taken
    # The newer token's writes go through (its own, again and again), and a newer one still.
    saved = store.save(replace(taken, step=Step.COMMIT), fence=3)
    assert store.save(replace(saved, step=Step.REFUND), fence=3).step is Step.REFUND
    done = store.save(replace(saved, status=Status.FAILED, step=Step.DONE), fence=4)
    assert store.get(order.order_id) == done
    assert done.fence == 4
    # A finished order is not reopened, nor fenced again: take() hands it back as it is.
    assert store.take(order.order_id, fence=5) == done
    store.delete(order.order_id, fence=4)
    assert store.take(order.order_id, fence=5) is None


def test_an_insert_of_an_order_a_successor_inserted_first_is_fenced_out(
    store: OrderStore,
) -> None:
    order = new_order(new_id("ord"), _new())
    store.insert(order, fence=2)  # a duplicate took the claimed order over and inserted it
    with pytest.raises(FencedOut):
        store.insert(order, fence=1)  # the first runner, paused before its insert, wakes up
    with pytest.raises(DuplicateRequest):
        store.insert(new_order(new_id("ord"), _new()), fence=1)  # another order, same request_id
