"""Redis stopped for 10 s under load, then started again with its data: reads keep serving,
CreateOrder fails fast with UNAVAILABLE naming Redis, and once Redis is back every service
takes up its work again by itself (no restart): new orders go through, orders caught mid-saga
are finished by recovery, stock and money moved once per CONFIRMED order, and the outbox
publishes every finished order's event.

The stack gets a redis-server of this test's (on a directory that outlives it), so the test can
stop it (``SHUTDOWN SAVE``, as a restarted persistent Redis) and start it again on its port.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import assert_all_gone, stack_config
from meshkit import order_events
from meshkit.order_events import OrderEvent
from meshkit.testing import RedisServer, free_port, redis_server, wait_until

from ._probes import assert_settled_and_moved_once, order_rows, stock

pytestmark = pytest.mark.stack

OUTAGE_S = 10.0
#: Short leases and recovery ages: the orders Redis's stop caught mid-saga end sooner after.
ENV = {"ORDER_LEASE_MS": "1000", "ORDER_RECOVERY_AGE_S": "0.5"}
SKUS = ("SKU-0022", "SKU-0023")


@dataclass(frozen=True, slots=True)
class Call:
    kind: str
    started: float
    ended: float
    code: grpc.StatusCode
    details: str = ""
    status: int = 0


class Load:
    """CreateOrders (two at a time) and reads (GetItem, ListItems, GetOrder) until stopped."""

    def __init__(self, edge: grpc.Channel) -> None:
        self._orders = order_pb2_grpc.OrderServiceStub(edge)
        self._items = inventory_pb2_grpc.InventoryServiceStub(edge)
        self.calls: list[Call] = []
        self.placed: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._run = uuid.uuid4().hex[:8]
        self._threads = [
            threading.Thread(target=self._create, args=(n,), daemon=True) for n in range(2)
        ] + [threading.Thread(target=self._read, daemon=True)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _call(self, kind: str, call: Callable[[], object]) -> object | None:
        started = time.monotonic()
        try:
            answer = call()
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            self._record(Call(kind, started, time.monotonic(), code, details))
            return None
        status = answer.status if isinstance(answer, order_pb2.Order) else 0
        self._record(Call(kind, started, time.monotonic(), grpc.StatusCode.OK, status=status))
        return answer

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _create(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request = order_pb2.CreateOrderRequest(
                customer_id=f"outage-{self._run}-{worker}",
                request_id=f"outage-{self._run}-{worker}-{n}",
                lines=[money_pb2.Line(sku=SKUS[n % len(SKUS)], quantity=1)],
            )
            placed = self._call(
                "CreateOrder", lambda r=request: self._orders.CreateOrder(r, timeout=5)
            )
            if isinstance(placed, order_pb2.Order):
                with self._lock:
                    self.placed.append(placed.order_id)
            else:
                time.sleep(0.05)  # a client backing off a little, not spinning

    def _read(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                order_id = self.placed[0] if self.placed else None
            self._call(
                "GetItem",
                lambda: self._items.GetItem(inventory_pb2.GetItemRequest(sku=SKUS[0]), timeout=5),
            )
            self._call(
                "ListItems",
                lambda: self._items.ListItems(
                    inventory_pb2.ListItemsRequest(page_size=5), timeout=5
                ),
            )
            if order_id is not None:
                self._call(
                    "GetOrder",
                    lambda o=order_id: self._orders.GetOrder(
                        order_pb2.GetOrderRequest(order_id=o), timeout=5
                    ),
                )
            time.sleep(0.02)

    def between(self, start: float, end: float, *kinds: str) -> list[Call]:
        with self._lock:
            return [
                c for c in self.calls if c.kind in kinds and start <= c.started and c.ended <= end
            ]


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "redis"
    directory.mkdir()
    return directory


@dataclass(frozen=True, slots=True)
class Outage:
    stack: Stack
    port: int
    #: Starts Redis again on its port and data (it stops after the stack).
    restart: Callable[[], RedisServer]


@pytest.fixture
def outage(tmp_path: Path, redis_dir: Path) -> Iterator[Outage]:
    port = free_port()
    with contextlib.ExitStack() as servers, open(os.devnull, "w") as quiet:
        first = servers.enter_context(redis_server(port, workdir=redis_dir))
        running = Stack(stack_config(tmp_path / "stack", first.url, ENV), out=quiet)
        try:
            running.up()
            yield Outage(
                running,
                port,
                lambda: servers.enter_context(redis_server(port, workdir=redis_dir)),
            )
        finally:
            pids = running.supervisor.pids() if running.supervisor.is_running() else {}
            running.down()
            assert_all_gone(pids)


def test_redis_down_for_10_s_under_load_costs_new_orders_only_and_loses_nothing(
    outage: Outage,
) -> None:
    stack = outage.stack
    pids = stack.supervisor.pids()
    since_us = time.time_ns() // 1000
    with grpc.insecure_channel(stack.config.edge_target) as edge:
        before = stock(edge, SKUS)
        with Load(edge) as load:
            wait_until(lambda: len(load.placed) >= 6, timeout_s=15, what="orders before")
            redis.Redis(port=outage.port).shutdown(save=True)
            down_at = time.monotonic()
            time.sleep(OUTAGE_S)
            restart_at = time.monotonic()
            back = outage.restart()
            up_at = time.monotonic()
            wait_until(
                lambda: any(
                    c.status == order_pb2.ORDER_STATUS_CONFIRMED
                    for c in load.between(up_at, time.monotonic(), "CreateOrder")
                ),
                timeout_s=15,
                what="a new order CONFIRMED after Redis came back",
            )
            load.stop()

            # While Redis was away, reads were answered, and every new order refused at
            # once with UNAVAILABLE saying why.
            # (A call that ended while Redis was starting may have been let through by it.)
            reads = load.between(down_at, restart_at, "GetItem", "ListItems", "GetOrder")
            assert {c.kind for c in reads} == {"GetItem", "ListItems", "GetOrder"}
            assert [c for c in reads if c.code is not grpc.StatusCode.OK] == []
            creates = load.between(down_at + 1, restart_at, "CreateOrder")
            assert len(creates) > 10  # refused fast enough to try again and again
            refused = {(c.code, c.details) for c in creates}
            assert {code for code, _ in refused} == {grpc.StatusCode.UNAVAILABLE}, refused
            assert all("redis" in details.lower() for _, details in refused), refused

            # Nothing lost: every order ends, stock and money moved once per CONFIRMED one,
            # and every finished order's event is on the stream (a duplicate only under its
            # own event_id).
            assert_settled_and_moved_once(stack, edge, before, since_us)
            finished = {
                order_events.event_id(row["order_id"], f"ORDER_STATUS_{row['status']}")
                for row in order_rows(stack)
            }

            def published() -> set[str]:
                entries = back.client().xrange(order_events.STREAM)
                assert isinstance(entries, list)
                return {OrderEvent.from_fields(fields).event_id for _, fields in entries}

            wait_until(lambda: published() >= finished, timeout_s=15, what="every event")
            assert published() == finished
    assert stack.supervisor.pids() == pids  # nothing was restarted
