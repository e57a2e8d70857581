"""Notifications end to end: orders through the edge end as exactly one notification each,
listed through the edge; the internal listener offers the service nothing; and a kill -9 of
the notification program under load (supervisord restarts it) loses or repeats none."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.notification.v1 import notification_pb2, notification_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.registry import NOTIFICATION_SERVICE
from meshctl.stack import Stack
from meshkit.testing import wait_until

from ._probes import create_order, metric_sum, order_rows

pytestmark = pytest.mark.stack

LIST_NOTIFICATIONS = f"/{NOTIFICATION_SERVICE}/ListNotifications"
#: SKUs few other stack tests order, one unit per order, so their stock stays theirs.
SKUS = ("SKU-0005", "SKU-0006", "SKU-0007", "SKU-0008")
CLIENTS = 4
#: Orders placed while the notification program is killed and restarted.
LOAD_ORDERS = 80
KILL_AFTER_ORDERS = 20


def _place(stub: order_pb2_grpc.OrderServiceStub, customer: str, n: int) -> order_pb2.Order:
    return create_order(
        stub,
        order_pb2.CreateOrderRequest(
            customer_id=customer,
            request_id=f"ntf-{uuid.uuid4()}",
            lines=[money_pb2.Line(sku=SKUS[n % len(SKUS)], quantity=1)],
        ),
    )


def _listed(edge: grpc.Channel, customer: str) -> list[notification_pb2.Notification]:
    stub = notification_pb2_grpc.NotificationServiceStub(edge)
    found: list[notification_pb2.Notification] = []
    token = ""
    while True:
        page = stub.ListNotifications(
            notification_pb2.ListNotificationsRequest(
                customer_id=customer, page_size=100, page_token=token
            ),
            timeout=5,
        )
        found += page.notifications
        token = page.next_page_token
        if not token:
            return found


def _final_orders(stack: Stack, customers: list[str]) -> dict[str, str]:
    """order_id -> final status of the customers' orders, from the order database."""
    marks = ", ".join(f"'{c}'" for c in customers)  # the test's own ids: [a-z0-9-]
    rows = order_rows(stack, f"customer_id IN ({marks}) AND status != 'PENDING'")
    return {row["order_id"]: f"ORDER_STATUS_{row['status']}" for row in rows}


def _notified(edge: grpc.Channel, customers: list[str]) -> Counter[tuple[str, str]]:
    """(order_id, status name) of every notification of the customers, with repeats counted."""
    return Counter(
        (n.order_id, order_pb2.OrderStatus.Name(n.status))
        for customer in customers
        for n in _listed(edge, customer)
    )


def _each_final_order_notified_once(
    stack: Stack, edge: grpc.Channel, customers: list[str]
) -> Callable[[], bool]:
    def check() -> bool:
        notified = _notified(edge, customers)
        assert all(count == 1 for count in notified.values()), notified.most_common(3)
        return set(notified) == set(_final_orders(stack, customers).items())

    return check


def test_each_order_through_the_edge_is_notified_once_with_its_final_status(
    stack: Stack, edge: grpc.Channel
) -> None:
    run = uuid.uuid4().hex[:8]
    customers = [f"ntf-{run}", f"decline-ntf-{run}"]
    stub = order_pb2_grpc.OrderServiceStub(edge)
    placed = [_place(stub, customers[n % 2], n) for n in range(12)]
    statuses = Counter(order_pb2.OrderStatus.Name(order.status) for order in placed)
    assert statuses == {"ORDER_STATUS_CONFIRMED": 6, "ORDER_STATUS_FAILED": 6}

    wait_until(
        _each_final_order_notified_once(stack, edge, customers),
        timeout_s=15,
        what="one notification per order",
    )
    failed = _listed(edge, customers[1])[0]
    assert failed.reason.startswith("payment declined"), failed
    assert failed.message == f"Your order {failed.order_id} failed: {failed.reason}."


def test_the_edge_serves_list_notifications_and_checks_its_input(edge: grpc.Channel) -> None:
    stub = notification_pb2_grpc.NotificationServiceStub(edge)
    empty = stub.ListNotifications(
        notification_pb2.ListNotificationsRequest(customer_id=f"nobody-{uuid.uuid4().hex}"),
        timeout=5,
    )
    assert list(empty.notifications) == []
    assert empty.next_page_token == ""
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListNotifications(
            notification_pb2.ListNotificationsRequest(customer_id="alice", page_size=1000),
            timeout=5,
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in str(raised.value.details())


def test_the_internal_listener_does_not_offer_the_notification_service(
    stack: Stack, as_order: grpc.Channel
) -> None:
    port = stack.config.ports["NOTIFICATION_METRICS_PORT"]

    def started() -> float:
        return metric_sum(
            port,
            "grpc_server_started_total",
            grpc_service=NOTIFICATION_SERVICE,
            grpc_method="ListNotifications",
        )

    before = started()
    call = as_order.unary_unary(
        LIST_NOTIFICATIONS,
        request_serializer=notification_pb2.ListNotificationsRequest.SerializeToString,
        response_deserializer=notification_pb2.ListNotificationsResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as raised:
        call(notification_pb2.ListNotificationsRequest(customer_id="alice"), timeout=5)
    # RBAC refuses it before routing (it is no workload's to call), even to the order identity.
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert started() == before


def test_a_killed_notification_program_loses_and_repeats_no_notification(
    stack: Stack, edge: grpc.Channel
) -> None:
    run = uuid.uuid4().hex[:8]
    # Several customers, so the per-customer rate limit never refuses the load.
    customers = [f"ntf-kill-{run}-{n}" for n in range(8)] + [f"decline-kill-{run}"]
    stub = order_pb2_grpc.OrderServiceStub(edge)
    numbers = iter(range(LOAD_ORDERS))
    lock = threading.Lock()
    placed = threading.Semaphore(0)

    def client() -> None:
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            _place(stub, customers[n % len(customers)], n)
            placed.release()

    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        for _ in range(KILL_AFTER_ORDERS):
            placed.acquire(timeout=30)
        killed = stack.supervisor.pids()["notification"]
        os.kill(killed, signal.SIGKILL)
    finally:
        for thread in clients:
            thread.join(60)

    def restarted() -> bool:
        """A new process, and Envoy routes to it again."""
        if stack.supervisor.pids().get("notification") in (None, killed):
            return False
        try:
            _listed(edge, "probe")
        except grpc.RpcError:
            return False
        return True

    wait_until(restarted, timeout_s=30, what="notification restarted by supervisord")
    assert len(_final_orders(stack, customers)) == LOAD_ORDERS
    wait_until(
        _each_final_order_notified_once(stack, edge, customers),
        timeout_s=30,
        what="one notification per order after the restart",
    )
