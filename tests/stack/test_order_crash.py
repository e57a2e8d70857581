"""A kill -9 of the order process mid-saga: supervisord restarts it, its in-flight orders end
within seconds, and a client retrying its request_id gets the final order, with stock and money
moved exactly once for each order confirmed and not at all for each that failed.

Every Charge takes PAYMENT_LATENCY_MS, so at the kill the clients' orders are inside their
sagas (reserved, charge on its way), and nothing renews their leases any more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import running_stack

from ._probes import payment_rows

pytestmark = pytest.mark.stack

CLIENTS = 8
SKU = "SKU-0009"
STOCK = 100_000
CHARGE_LATENCY_MS = 300
#: The scenario's bound: the in-flight orders end within this long of the restart.
ENDED_WITHIN_S = 10.0
CLIENT_DEADLINE_S = 10.0
POLL_S = 0.05


@dataclass
class Client:
    """One client's orders: the answer to each request_id, and those it had to retry."""

    answers: dict[str, order_pb2.Order] = field(default_factory=dict)
    retried: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One customer places every order: no per-customer rate limit.
    env = {
        "INVENTORY_SEED_STOCK": str(STOCK),
        "PAYMENT_LATENCY_MS": str(CHARGE_LATENCY_MS),
        "ORDER_RATE_PER_S": "0",
    }
    with running_stack(tmp_path_factory.mktemp("order-crash"), env) as running:
        yield running


def pending_orders(stack: Stack) -> list[str]:
    path = stack.config.data_dir / "order.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute("SELECT order_id FROM orders WHERE status = 'PENDING'").fetchall()
    return [order_id for (order_id,) in rows]


def place_orders(
    orders: order_pb2_grpc.OrderServiceStub, client: Client, stop: threading.Event, give_up: float
) -> None:
    """Places orders one after another until ``stop``, retrying each request_id until answered."""
    while not stop.is_set():
        request = order_pb2.CreateOrderRequest(
            customer_id="cust-crash",
            request_id=f"crash-{uuid.uuid4()}",
            lines=[money_pb2.Line(sku=SKU, quantity=1)],
        )
        while time.monotonic() < give_up:
            try:
                answer = orders.CreateOrder(request, timeout=CLIENT_DEADLINE_S)
            except grpc.RpcError:  # the process died under the call, or is restarting
                client.retried.add(request.request_id)
                time.sleep(POLL_S)
                continue
            client.answers[request.request_id] = answer
            break


def wait_for(what: str, done: object, deadline: float) -> None:
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(POLL_S)


def test_a_killed_order_process_s_orders_end_soon_after_its_restart_and_retries_get_them(
    crash_stack: Stack,
) -> None:
    stack = crash_stack
    with grpc.insecure_channel(stack.config.edge_target) as channel:
        orders = order_pb2_grpc.OrderServiceStub(channel)
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        give_up = time.monotonic() + 60
        clients = [Client() for _ in range(CLIENTS)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=place_orders, args=(orders, client, stop, give_up))
            for client in clients
        ]
        for thread in threads:
            thread.start()
        try:
            wait_for(
                "orders to be placed", lambda: sum(len(c.answers) for c in clients) >= 16, give_up
            )
            wait_for("orders mid-saga", lambda: len(pending_orders(stack)) >= CLIENTS // 2, give_up)
            old_pid = stack.supervisor.pids()["order"]
            in_flight = pending_orders(stack)
            os.kill(old_pid, signal.SIGKILL)
            stop.set()  # each client retries the order it has until answered, then stops
            wait_for(
                "supervisord to restart order",
                lambda: stack.supervisor.pids().get("order", old_pid) != old_pid,
                give_up,
            )
            restarted_at = time.monotonic()
            wait_for(
                "the in-flight orders to end",
                lambda: not set(in_flight) & set(pending_orders(stack)),
                restarted_at + ENDED_WITHIN_S,
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=max(0.0, give_up - time.monotonic()) + CLIENT_DEADLINE_S)
        assert not any(thread.is_alive() for thread in threads)

        answers = {rid: a for client in clients for rid, a in client.answers.items()}
        retried = {rid for client in clients for rid in client.retried}
        assert retried, "no call was cut by the kill"
        assert retried <= answers.keys(), "a retried request_id never got its order"
        # Each in-flight order was some client's, and the retry got it final, not PENDING.
        answered_ids = {a.order_id: a for a in answers.values()}
        assert set(in_flight) <= answered_ids.keys()
        for request_id in retried:
            assert answers[request_id].status != order_pb2.ORDER_STATUS_PENDING, request_id
        for answer in answers.values():
            stored = orders.GetOrder(order_pb2.GetOrderRequest(order_id=answer.order_id), timeout=5)
            assert stored.status == answer.status
            assert stored.order_id == answer.order_id

        # Stock and money moved exactly once per confirmed order, and not at all otherwise.
        confirmed = [a for a in answers.values() if a.status == order_pb2.ORDER_STATUS_CONFIRMED]
        assert len(confirmed) == len(answers), {a.failure_reason for a in answers.values()}
        item = inventory.GetItem(inventory_pb2.GetItemRequest(sku=SKU), timeout=5)
        assert item.available == STOCK - len(confirmed)
        marks = {f"o{i}": a.order_id for i, a in enumerate(answers.values())}
        rows = payment_rows(stack, f"order_id IN ({','.join(':' + k for k in marks)})", marks)
        assert sorted((r["order_id"], r["state"]) for r in rows) == sorted(
            (a.order_id, "CAPTURED") for a in confirmed
        )
        by_order = {r["order_id"]: r for r in rows}
        for order in confirmed:
            assert by_order[order.order_id]["payment_id"] == order.payment_id
