"""The order saga through the Envoy edge: the oversell race and a declined customer.

Each test owns a SKU no other stack test touches, so the shared stack's stock is its own.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl.stack import Stack

from . import _probes as probes
from ._probes import payment_rows

pytestmark = pytest.mark.stack

RACE_SKU = "SKU-0020"
DECLINE_SKU = "SKU-0019"
RACE_STOCK = 10
RACERS = 50


def create_order(
    orders: order_pb2_grpc.OrderServiceStub, customer_id: str, sku: str, quantity: int
) -> order_pb2.Order:
    # Fifty at once are more than the order service takes in flight: the rest wait as told.
    return probes.create_order(
        orders,
        order_pb2.CreateOrderRequest(
            customer_id=customer_id,
            request_id=f"e2e-{uuid.uuid4()}",
            lines=[money_pb2.Line(sku=sku, quantity=quantity)],
        ),
    )


def available(inventory: inventory_pb2_grpc.InventoryServiceStub, sku: str) -> int:
    """GetItem through the edge: the read-through cache, invalidated on every stock change."""
    item = inventory.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=5)
    return int(item.available)


def test_fifty_concurrent_orders_on_stock_ten_confirm_exactly_ten(
    stack: Stack, edge: grpc.Channel
) -> None:
    orders = order_pb2_grpc.OrderServiceStub(edge)
    inventory = inventory_pb2_grpc.InventoryServiceStub(edge)
    payments = payment_pb2_grpc.PaymentServiceStub(edge)
    start = available(inventory, RACE_SKU)
    assert start > RACE_STOCK, f"{RACE_SKU} has only {start} left: is another test using it?"
    big = create_order(orders, "cust-e2e-bulk", RACE_SKU, start - RACE_STOCK)
    assert big.status == order_pb2.ORDER_STATUS_CONFIRMED, big.failure_reason
    assert available(inventory, RACE_SKU) == RACE_STOCK

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        raced = list(
            pool.map(
                lambda i: create_order(orders, f"cust-e2e-race-{i}", RACE_SKU, 1), range(RACERS)
            )
        )

    assert len({o.order_id for o in raced}) == RACERS
    confirmed = [o for o in raced if o.status == order_pb2.ORDER_STATUS_CONFIRMED]
    failed = [o for o in raced if o.status == order_pb2.ORDER_STATUS_FAILED]
    assert len(confirmed) == RACE_STOCK, [o.failure_reason for o in failed]
    assert len(failed) == RACERS - RACE_STOCK
    assert all(o.failure_reason.startswith("out of stock") for o in failed), {
        o.failure_reason for o in failed
    }
    assert all(not o.payment_id for o in failed)
    # Never below zero, and the cached read agrees with what was sold.
    assert available(inventory, RACE_SKU) == 0

    # Exactly one captured payment per confirmed order, for that order and its total.
    captured = [
        payments.GetPayment(payment_pb2.GetPaymentRequest(payment_id=o.payment_id), timeout=5)
        for o in confirmed
    ]
    assert len({p.payment_id for p in captured}) == RACE_STOCK
    for order, payment in zip(confirmed, captured, strict=True):
        assert payment.state == payment_pb2.PAYMENT_STATE_CAPTURED
        assert payment.order_id == order.order_id
        assert payment.amount == order.total
    # The orders that lost the race never reached payment at all.
    failed_ids = {o.order_id for o in failed}
    placeholders = ",".join(f":o{i}" for i in range(len(failed_ids)))
    leaked = payment_rows(
        stack,
        f"order_id IN ({placeholders})",
        {f"o{i}": order_id for i, order_id in enumerate(sorted(failed_ids))},
    )
    assert leaked == []
    # Every order reads back as it was answered.
    for order in raced:
        stored = orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.order_id), timeout=5)
        assert stored == order


def test_a_declined_customer_fails_releases_its_stock_and_captures_nothing(
    stack: Stack, edge: grpc.Channel
) -> None:
    orders = order_pb2_grpc.OrderServiceStub(edge)
    inventory = inventory_pb2_grpc.InventoryServiceStub(edge)
    before = available(inventory, DECLINE_SKU)

    order = create_order(orders, f"decline-e2e-{uuid.uuid4().hex[:8]}", DECLINE_SKU, 3)

    assert order.status == order_pb2.ORDER_STATUS_FAILED
    assert order.failure_reason.startswith("payment declined"), order.failure_reason
    assert available(inventory, DECLINE_SKU) == before
    # The declined charge is on record (by the saga's charge request id), and nothing else
    # for this order: no money moved.
    rows = payment_rows(stack, "order_id = :order_id", {"order_id": order.order_id})
    assert [(r["request_id"], r["state"]) for r in rows] == [
        (f"charge-{order.order_id}", "DECLINED")
    ]
    assert rows[0]["decline_reason"]
    payment = payment_pb2_grpc.PaymentServiceStub(edge).GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=order.payment_id), timeout=5
    )
    assert payment.state == payment_pb2.PAYMENT_STATE_DECLINED
    assert orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.order_id), timeout=5) == order
