"""The transactional outbox: a finished order's event is written with its end, published to the
order events stream by the relay, survives a Redis outage and a kill -9 at either side of the
publish, and is never published under two ids."""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from prometheus_client import REGISTRY

from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshkit import order_events
from meshkit.ids import new_id
from meshkit.order_events import OrderEvent
from meshkit.sqlite import Database
from meshkit.testing import free_port, is_serving, redis_server, wait_until
from order_service import metric_names as m
from order_service.config import Settings
from order_service.domain import Line, Money, NewOrder, Status, Step, new_order
from order_service.domain import Order as DomainOrder
from order_service.metrics import outbox_metrics
from order_service.outbox import Relay
from order_service.ports import FencedOut
from order_service.server import build_app
from order_service.store import MIGRATIONS, SCHEMA, OrderStore
from resilience import WaitFixed

from .conftest import SEED_STOCK, Order, proto_lines

SKU = "SKU-0007"


def events(client: redis.Redis) -> list[OrderEvent]:
    entries = client.xrange(order_events.STREAM)
    assert isinstance(entries, list)
    return [OrderEvent.from_fields(fields) for _, fields in entries]


def outbox_rows(data_dir: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(data_dir / "order.db")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM outbox ORDER BY seq")]


def metric(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    return 0.0 if value is None else value


# --- the store: the event is part of the order's final write ------------------------------------


@pytest.fixture
def store_db(tmp_path: Path) -> Database:
    return Database(tmp_path / "order.db", SCHEMA, MIGRATIONS)


def _store(db: Database, **kwargs: Any) -> OrderStore:
    ticks = itertools.count(1_700_000_000_000_000, 1_000)
    return OrderStore(db, clock=lambda: next(ticks), **kwargs)


def _pending() -> DomainOrder:
    request = NewOrder(customer_id="cust-1", lines=(Line(SKU, 2),), request_id=new_id("req"))
    return new_order(new_id("ord"), request)


def test_only_the_save_that_finishes_an_order_writes_its_event(store_db: Database) -> None:
    woken: list[int] = []
    store = _store(store_db, on_event=lambda: woken.append(1))
    order = store.insert(_pending(), fence=1)
    charged = store.save(
        replace(order, step=Step.COMMIT, reservation_id="res_1", total=Money("USD", 1998)),
        fence=1,
    )
    assert store.outbox(10) == []
    assert woken == []
    confirmed = store.save(replace(charged, status=Status.CONFIRMED, step=Step.DONE), fence=1)
    # A second finish is refused by the status guard, and writes no second event.
    store.save(replace(charged, status=Status.FAILED, step=Step.DONE, failure_reason="x"), fence=1)
    [row] = store.outbox(10)
    assert woken == [1]
    event = OrderEvent.from_fields(row.fields)
    assert event == OrderEvent(
        event_id=f"{order.order_id}:ORDER_STATUS_CONFIRMED",
        type="order.confirmed",
        order_id=order.order_id,
        customer_id="cust-1",
        status="ORDER_STATUS_CONFIRMED",
        total_units=1998,
        total_currency="USD",
        occurred_at_ms=confirmed.update_time_us // 1000,
    )
    assert row.created_ms == event.occurred_at_ms
    store.published([row.seq])
    assert store.outbox(10) == []
    assert store.outbox_backlog() == (0, None)


def test_a_refused_finish_writes_no_event(store_db: Database) -> None:
    store = _store(store_db)
    order = store.insert(_pending(), fence=2)
    with pytest.raises(FencedOut):
        store.save(replace(order, status=Status.FAILED, step=Step.DONE), fence=1)
    assert store.outbox(10) == []


def test_with_events_off_no_event_is_written(store_db: Database) -> None:
    store = _store(store_db, events=False)
    order = store.insert(_pending(), fence=1)
    store.save(replace(order, status=Status.FAILED, step=Step.DONE, failure_reason="x"), fence=1)
    assert store.outbox(10) == []


def test_a_consumer_blocked_on_the_stream_reads_a_published_batch_at_once(
    store_db: Database, own_redis: int
) -> None:
    store = _store(store_db)
    for _ in range(5):
        order = store.insert(_pending(), fence=1)
        store.save(
            replace(order, status=Status.FAILED, step=Step.DONE, failure_reason="x"), fence=1
        )
    client = redis.Redis(port=own_redis)
    client.xgroup_create(order_events.STREAM, "probe", id="0", mkstream=True)
    first_read: list[Any] = []

    def consume() -> None:
        with closing(redis.Redis(port=own_redis)) as reader:
            first_read.extend(
                reader.xreadgroup("probe", "c", {order_events.STREAM: ">"}, count=16, block=5000)
            )

    consumer = threading.Thread(target=consume)
    consumer.start()
    wait_until(
        lambda: any(c.get("cmd") == "xreadgroup" for c in client.client_list()),
        timeout_s=10,
        what="the consumer blocked on the stream",
    )
    assert Relay(store, client, threading.Event()).drain() == 5
    consumer.join(timeout=10)

    # One MULTI/EXEC: a plain pipeline would wake the consumer with its first XADD alone.
    [(_, entries)] = first_read
    assert len(entries) == 5


# --- the relay against a real order server and Redis --------------------------------------------


def test_confirmed_and_failed_orders_each_publish_one_event(
    order: Order, redis_url: str, data_dir: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    published = metric(m.EVENTS_PUBLISHED)
    confirmed = order.create("cust-ev", (SKU, 2), request_id=new_id("req"))
    failed = order.create("cust-ev", (SKU, SEED_STOCK + 1), request_id=new_id("req"))
    assert confirmed.status == order_pb2.ORDER_STATUS_CONFIRMED
    assert failed.status == order_pb2.ORDER_STATUS_FAILED
    wait_until(lambda: client.xlen(order_events.STREAM) >= 2, timeout_s=10, what="2 events")
    first, second = events(client)
    assert (first.order_id, first.type, first.status) == (
        confirmed.order_id,
        order_events.ORDER_CONFIRMED,
        "ORDER_STATUS_CONFIRMED",
    )
    assert first.event_id == f"{confirmed.order_id}:ORDER_STATUS_CONFIRMED"
    assert (first.total_units, first.total_currency, first.reason) == (
        confirmed.total.amount_minor,
        confirmed.total.currency_code,
        "",
    )
    assert first.customer_id == "cust-ev"
    assert first.occurred_at_ms == confirmed.update_time.ToMilliseconds()
    assert (second.order_id, second.type, second.status) == (
        failed.order_id,
        order_events.ORDER_FAILED,
        "ORDER_STATUS_FAILED",
    )
    assert second.reason == failed.failure_reason
    assert second.reason.startswith("out of stock")
    assert client.xlen(order_events.STREAM) == 2
    wait_until(lambda: not outbox_rows(data_dir), timeout_s=10, what="the outbox to empty")
    assert metric(m.EVENTS_PUBLISHED) - published == 2


@pytest.fixture
def own_redis() -> Iterator[int]:
    """A redis-server of this test's, which it stops and starts again on the same port."""
    port = free_port()
    with redis_server(port):
        yield port


def test_events_finished_while_redis_is_down_are_published_once_it_is_back(
    order_env: dict[str, str], own_redis: int, data_dir: Path
) -> None:
    url = f"redis://127.0.0.1:{own_redis}/0"
    app = build_app(Settings.from_env({**order_env, "REDIS_URL": url}))
    metrics = outbox_metrics()
    failures = metric(m.EVENTS_PUBLISH_FAILURES)
    try:
        # The relay is not running yet: the events wait in the outbox.
        for _ in range(3):
            request = NewOrder(
                customer_id="cust-down", lines=(Line(SKU, 1),), request_id=new_id("r")
            )
            assert app.orders.create(request, wait_s=5).status is Status.CONFIRMED
        assert len(outbox_rows(data_dir)) == 3
        relay = Relay(
            app.store,
            app.redis,
            threading.Event(),
            poll_s=3600,  # only the backoff retries: nothing else would wake it
            backoff=WaitFixed(seconds=0.05),
            rng=random.Random(1),
            listener=metrics,
        )
        redis.Redis(port=own_redis).shutdown(nosave=True)
        relay.start()
        try:
            wait_until(
                lambda: metric(m.EVENTS_PUBLISH_FAILURES) - failures >= 2,
                timeout_s=10,
                what="the relay to fail twice",
            )
            assert len(outbox_rows(data_dir)) == 3
            assert metric(m.OUTBOX_PENDING) == 3
            with redis_server(own_redis) as back:
                wait_until(
                    lambda: back.client().xlen(order_events.STREAM) == 3,
                    timeout_s=10,
                    what="the backlog to drain",
                )
                wait_until(lambda: not outbox_rows(data_dir), timeout_s=10, what="an empty outbox")
                assert len({event.event_id for event in events(back.client())}) == 3
                wait_until(lambda: metric(m.OUTBOX_PENDING) == 0, timeout_s=10, what="gauge 0")
                assert metric(m.OUTBOX_OLDEST_AGE) == 0
        finally:
            relay.stop()
    finally:
        app.close()


# --- kill -9 at either side of the publish ------------------------------------------------------

#: An ACL user that may do everything but XADD: orders finish, their events cannot be published.
USER, PASSWORD = "orders", "orders-secret"


def _spawn(env: dict[str, str], data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / "order.log").open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "order_service"],
            env={
                **os.environ,
                **env,
                "MESH_HOST": "127.0.0.1",
                "ORDER_PORT": str(port),
                "ORDER_METRICS_PORT": str(free_port()),
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    wait_until(lambda: is_serving(f"127.0.0.1:{port}"), timeout_s=20, what="the order process")
    return popen, port


def test_a_kill_9_before_or_after_the_publish_loses_no_event_and_repeats_only_its_id(
    order_env: dict[str, str], own_redis: int, data_dir: Path
) -> None:
    admin = redis.Redis(port=own_redis)
    admin.acl_setuser(
        USER,
        enabled=True,
        passwords=[f"+{PASSWORD}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-xadd"],
    )
    env = {
        **order_env,
        "REDIS_URL": f"redis://{USER}:{PASSWORD}@127.0.0.1:{own_redis}/0",
        "ORDER_OUTBOX_POLL_S": "0.05",
    }
    popen, port = _spawn(env, data_dir)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            placed = order_pb2_grpc.OrderServiceStub(channel).CreateOrder(
                order_pb2.CreateOrderRequest(
                    customer_id="cust-kill", lines=proto_lines((SKU, 1)), request_id="kill-1"
                ),
                timeout=15,
            )
        assert placed.status == order_pb2.ORDER_STATUS_CONFIRMED
        # Committed, and the relay refused: kill -9 before any publish.
        assert len(outbox_rows(data_dir)) == 1
        popen.kill()
        popen.wait(timeout=10)
        assert admin.xlen(order_events.STREAM) == 0

        # Restarted, still refused. Then allowed to publish; but the delete that follows waits
        # for the SQLite write lock this test holds: kill -9 between the publish and the delete.
        popen, port = _spawn(env, data_dir)
        with closing(sqlite3.connect(data_dir / "order.db", isolation_level=None)) as lock:
            lock.execute("BEGIN IMMEDIATE")
            admin.acl_setuser(USER, enabled=True, commands=["+xadd"])
            wait_until(lambda: admin.xlen(order_events.STREAM) == 1, timeout_s=10, what="XADD")
            popen.kill()
            popen.wait(timeout=10)
            lock.execute("ROLLBACK")
        assert len(outbox_rows(data_dir)) == 1

        # Restarted again, it publishes the same event again, under the same id, and deletes it.
        popen, port = _spawn(env, data_dir)
        wait_until(lambda: admin.xlen(order_events.STREAM) == 2, timeout_s=10, what="republish")
        wait_until(lambda: not outbox_rows(data_dir), timeout_s=10, what="an empty outbox")
        first, again = events(admin)
        assert first == again
        assert first.event_id == f"{placed.order_id}:ORDER_STATUS_CONFIRMED"
    finally:
        popen.kill()
        popen.wait(timeout=10)
