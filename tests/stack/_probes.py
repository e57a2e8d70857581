"""Read-only looks inside a running stack for end-to-end assertions: a service's Prometheus
/metrics, Envoy's admin counters, the order database and the payments table the two payment
deployments share, and the invariants over them. Nothing here changes the stack."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from contextlib import closing
from typing import Any

import grpc

from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import metric_sum
from meshkit.errors import PUSHBACK_HEADER

PAYMENT_SERVICE_NAME = "mesh.payment.v1.PaymentService"
PAYMENT_CLUSTERS = ("payment_v1", "payment_v2")


def payment_metrics_ports(stack: Stack) -> dict[str, int]:
    c = stack.config
    return {
        "payment_v1": c.ports["PAYMENT_V1_METRICS_PORT"],
        "payment_v2": c.ports["PAYMENT_V2_METRICS_PORT"],
    }


def server_handled(port: int, method: str, **labels: str) -> int:
    """``grpc_server_handled_total`` of one PaymentService method on one process."""
    return int(
        metric_sum(
            port,
            "grpc_server_handled_total",
            grpc_service=PAYMENT_SERVICE_NAME,
            grpc_method=method,
            **labels,
        )
    )


def payment_handled(stack: Stack, method: str, **labels: str) -> dict[str, int]:
    """Per payment deployment, how many ``method`` calls its server finished (any code)."""
    return {
        cluster: server_handled(port, method, **labels)
        for cluster, port in payment_metrics_ports(stack).items()
    }


def envoy_counters(stack: Stack, pattern: str) -> dict[str, int]:
    """Envoy admin counters whose names match the regex ``pattern``."""
    counters: dict[str, int] = {}
    for line in stack.envoy.get("/stats?filter=" + pattern).splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            counters[name] = int(value)
    return counters


def envoy_counter(stack: Stack, name: str) -> int:
    """One Envoy counter; 0 when Envoy has not created it yet (nothing counted)."""
    return envoy_counters(stack, "^" + re.escape(name) + "$").get(name, 0)


def payment_rows(stack: Stack, where: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the shared payments table, read through a read-only connection."""
    path = stack.config.data_dir / "payment.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        conn.row_factory = sqlite3.Row
        query = f"SELECT * FROM payments WHERE {where}"  # noqa: S608 - the tests' own clauses
        rows = conn.execute(query, dict(params)).fetchall()
    return [dict(row) for row in rows]


def order_rows(stack: Stack, where: str = "1 = 1") -> list[dict[str, Any]]:
    """Rows of the order database, read through a read-only connection."""
    path = stack.config.data_dir / "order.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        conn.row_factory = sqlite3.Row
        query = f"SELECT * FROM orders WHERE {where}"  # noqa: S608 - the tests' own clauses
        return [dict(row) for row in conn.execute(query).fetchall()]


def stock(edge: grpc.Channel, skus: Iterable[str]) -> dict[str, int]:
    """Each SKU's available stock, as GetItem answers through the edge."""
    stub = inventory_pb2_grpc.InventoryServiceStub(edge)
    return {
        sku: int(stub.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=5).available)
        for sku in skus
    }


def assert_settled_and_moved_once(
    stack: Stack,
    edge: grpc.Channel,
    before: Mapping[str, int],
    since_us: int,
    timeout_s: float = 30,
) -> None:
    """Once recovery has ended every order (none left PENDING), stock and money moved exactly
    once per CONFIRMED order and not at all for a FAILED one: the stock of ``before``'s SKUs
    went down by the quantities of the orders CONFIRMED since ``since_us``, and the money
    captured is the CONFIRMED orders' totals, one payment each (the whole stack's)."""
    deadline = time.monotonic() + timeout_s
    while order_rows(stack, "status = 'PENDING'"):
        assert time.monotonic() < deadline, order_rows(stack, "status = 'PENDING'")[:3]
        time.sleep(0.2)
    confirmed = order_rows(stack, "status = 'CONFIRMED'")
    captured = payment_rows(stack, "state = 'CAPTURED'", {})
    assert sorted(p["order_id"] for p in captured) == sorted(o["order_id"] for o in confirmed)
    assert sum(p["amount_minor"] for p in captured) == sum(o["total"] for o in confirmed)
    sold = dict.fromkeys(before, 0)
    for order in confirmed:
        if order["create_time"] >= since_us:
            for line in json.loads(order["lines"]):
                if line["sku"] in sold:
                    sold[line["sku"]] += line["quantity"]
    after = stock(edge, before)
    assert {sku: before[sku] - after[sku] for sku in before} == sold


def create_order(
    stub: order_pb2_grpc.OrderServiceStub,
    request: order_pb2.CreateOrderRequest,
    timeout_s: float = 30,
) -> order_pb2.Order:
    """CreateOrder as a well-behaved client sends it: refused for being over the order
    service's cap of calls in flight (RESOURCE_EXHAUSTED with a pushback), it waits as told and
    sends the same request again (the request_id makes that safe), until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            order: order_pb2.Order = stub.CreateOrder(
                request, timeout=max(0.1, deadline - time.monotonic())
            )
            return order
        except grpc.RpcError as error:
            pushback = dict(error.trailing_metadata() or ()).get(PUSHBACK_HEADER)
            if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or pushback is None:
                raise
            if time.monotonic() + int(pushback) / 1000 >= deadline:
                raise
            time.sleep(int(pushback) / 1000)
