"""SQLite orders and the Redis claims and leases, against a real file and a real redis-server."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from meshkit.ids import new_id
from meshkit.redis_client import connect
from meshkit.sqlite import Database
from order_service.domain import Line, Money, NewOrder, Status, Step, new_order
from order_service.store import (
    SCHEMA,
    Claim,
    Claims,
    Cursor,
    DuplicateRequest,
    Leases,
    OrderStore,
    idempotency_key,
)


@pytest.fixture
def store(tmp_path: Path) -> OrderStore:
    ticks = itertools.count(1_000_000)
    return OrderStore(Database(tmp_path / "order.db", SCHEMA), clock=lambda: next(ticks))


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


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


def test_a_claim_is_won_once_and_withdrawn_only_by_its_owner(client: redis.Redis) -> None:
    claims = Claims(client)
    mine, theirs = Claim("ord_a", "f1"), Claim("ord_b", "f2")
    assert claims.claim("req-1", mine) is None
    assert claims.claim("req-1", theirs) == mine
    assert 0 < client.ttl(idempotency_key("req-1")) <= 86_400
    assert not claims.withdraw("req-1", theirs)
    assert claims.holder("req-1") == mine
    assert claims.withdraw("req-1", mine)
    assert claims.holder("req-1") is None


def test_a_lease_is_exclusive_and_only_its_holder_extends_or_releases_it(
    client: redis.Redis,
) -> None:
    leases = Leases(client, lease_ms=10_000)
    first, second = leases.lease("ord_1"), leases.lease("ord_1")
    assert first.acquire()
    assert not second.acquire()
    assert not second.extend()
    second.release()  # not its lease: a no-op
    assert client.get(first.key) == first.token
    client.pexpire(first.key, 50)
    assert first.extend()
    assert 5_000 < client.pttl(first.key) <= 10_000
    first.release()
    assert second.acquire()


def test_an_expired_lease_cannot_be_extended_or_released_over_its_successor(
    client: redis.Redis,
) -> None:
    leases = Leases(client, lease_ms=10_000)
    stale, successor = leases.lease("ord_1"), leases.lease("ord_1")
    assert stale.acquire()
    client.delete(stale.key)  # what expiry does
    assert successor.acquire()
    assert not stale.extend()
    stale.release()
    assert client.get(successor.key) == successor.token


def test_keep_trusts_a_fresh_confirmation_and_asks_redis_once_it_is_old(
    client: redis.Redis,
) -> None:
    now = [100.0]
    leases = Leases(client, lease_ms=10_000, recheck_s=1.0, monotonic=lambda: now[0])
    lease = leases.lease("ord_1")
    assert lease.acquire()
    client.pexpire(lease.key, 5_000)

    now[0] += 0.5  # confirmed half a second ago: no round trip, the term is untouched
    assert lease.keep()
    assert client.pttl(lease.key) <= 5_000

    now[0] += 1.0  # too old to trust: renewed for a full term
    assert lease.keep()
    assert client.pttl(lease.key) > 5_000

    client.delete(lease.key)  # lost (e.g. Redis lost its data): noticed at the next check
    now[0] += 1.0
    assert not lease.keep()
    assert not lease.keep()  # and never trusted again without Redis saying so


def test_keep_never_trusts_longer_than_a_quarter_of_the_term(client: redis.Redis) -> None:
    leases = Leases(client, lease_ms=1_000, recheck_s=5.0)
    assert leases.recheck_s == 0.25
