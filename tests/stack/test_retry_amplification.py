"""A mesh whose payment always fails (PAYMENT_FAULT_RATE=1 on v1 and v2), through the edge.

The saga compensates (VoidCharge tombstone, stock released; a Charge the open breaker refused
before it left needs no VoidCharge), and retries do not multiply
across layers: the order service's resilience pipeline is the only layer that retries Charge
(maxAttempts 5, a retry budget, a per-method breaker; order_service/resilience.yaml), Envoy
retries nothing that reached payment, and grpcio has no retryPolicy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import running_stack
from resilience import OUTCOME_BREAKER_OPEN, metric_names

from ._probes import (
    PAYMENT_CLUSTERS,
    envoy_counter,
    metric_sum,
    payment_handled,
    payment_rows,
)

pytestmark = pytest.mark.stack

#: order_service/resilience.yaml: retryPolicy.maxAttempts of the default method config.
MAX_ATTEMPTS = 5
SEQUENTIAL_ORDERS = 12
OUTAGE_SKU = "SKU-0018"
CHARGE_METHOD = "/mesh.payment.v1.PaymentService/Charge"
CHARGE_STATS = "cluster.{cluster}.grpc.mesh.payment.v1.PaymentService.Charge.{outcome}"


@pytest.fixture(scope="module")
def faulty_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second mesh where every Charge fails UNAVAILABLE before doing anything."""
    # One customer places every order: no per-customer rate limit.
    env = {"PAYMENT_FAULT_RATE": "1", "PAYMENT_FAULT_CODE": "UNAVAILABLE", "ORDER_RATE_PER_S": "0"}
    with running_stack(tmp_path_factory.mktemp("faulty"), env) as running:
        yield running


@pytest.fixture(scope="module")
def faulty_edge(faulty_stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(faulty_stack.config.edge_target) as channel:
        yield channel


def order_attempts(stack: Stack, name: str, **labels: str) -> int:
    """A resilience metric of the order service's payment channel, for Charge."""
    port = stack.config.ports["ORDER_METRICS_PORT"]
    return int(metric_sum(port, name, target="payment", method=CHARGE_METHOD, **labels))


def place_order(edge: grpc.Channel, quantity: int = 1) -> order_pb2.Order:
    order: order_pb2.Order = order_pb2_grpc.OrderServiceStub(edge).CreateOrder(
        order_pb2.CreateOrderRequest(
            customer_id="cust-outage",
            request_id=f"outage-{uuid.uuid4()}",
            lines=[money_pb2.Line(sku=OUTAGE_SKU, quantity=quantity)],
        ),
        timeout=30,
    )
    return order


def stock(edge: grpc.Channel) -> int:
    item = inventory_pb2_grpc.InventoryServiceStub(edge).GetItem(
        inventory_pb2.GetItemRequest(sku=OUTAGE_SKU), timeout=5
    )
    return int(item.available)


def assert_voided_and_released(stack: Stack, order: order_pb2.Order) -> None:
    assert order.status == order_pb2.ORDER_STATUS_FAILED
    assert order.failure_reason.startswith("payment unavailable"), order.failure_reason
    rows = payment_rows(stack, "order_id = :order_id", {"order_id": order.order_id})
    if "circuit breaker" in order.failure_reason:
        # The open breaker refused the Charge before it left: nothing to void, nothing exists.
        assert (rows, order.payment_id) == ([], "")
        return
    # VoidCharge left a tombstone under the saga's charge request id, so a late Charge can
    # never capture; nothing else exists for the order, and the order links to it.
    assert [(r["request_id"], r["state"]) for r in rows] == [(f"charge-{order.order_id}", "VOIDED")]
    assert order.payment_id == rows[0]["payment_id"]


def test_payment_unavailable_fails_the_order_voids_the_charge_and_releases_stock(
    faulty_stack: Stack, faulty_edge: grpc.Channel
) -> None:
    before = stock(faulty_edge)
    charges = sum(payment_handled(faulty_stack, "Charge").values())
    voids = sum(payment_handled(faulty_stack, "VoidCharge", grpc_code="OK").values())

    order = place_order(faulty_edge, quantity=4)

    assert_voided_and_released(faulty_stack, order)
    assert stock(faulty_edge) == before
    # The Charge attempts that reached payment all failed; one VoidCharge put things right.
    assert sum(payment_handled(faulty_stack, "Charge", grpc_code="OK").values()) == 0
    assert sum(payment_handled(faulty_stack, "Charge").values()) - charges <= MAX_ATTEMPTS
    assert sum(payment_handled(faulty_stack, "VoidCharge", grpc_code="OK").values()) == voids + 1


def test_a_dead_payment_sees_at_most_max_attempts_per_order_and_envoy_retries_nothing(
    faulty_stack: Stack, faulty_edge: grpc.Channel
) -> None:
    before_server = payment_handled(faulty_stack, "Charge")
    before_client = order_attempts(faulty_stack, metric_names.ATTEMPTS)
    before_shed = order_attempts(
        faulty_stack, metric_names.REJECTIONS, outcome=OUTCOME_BREAKER_OPEN
    ) + order_attempts(faulty_stack, metric_names.RETRY_BUDGET_EXHAUSTED)
    stock_before = stock(faulty_edge)

    placed = [place_order(faulty_edge) for _ in range(SEQUENTIAL_ORDERS)]

    for order in placed:
        assert_voided_and_released(faulty_stack, order)
    assert stock(faulty_edge) == stock_before
    # Once the breaker opened, orders failed fast without a Charge or a VoidCharge sent.
    assert any("circuit breaker" in order.failure_reason for order in placed)

    after_server = payment_handled(faulty_stack, "Charge")
    reached = sum(after_server.values()) - sum(before_server.values())
    # One attempt per order at least while the breaker is closed; never more than maxAttempts.
    assert reached <= MAX_ATTEMPTS * SEQUENTIAL_ORDERS
    # The retry budget and the breaker cut the storm well below the no-policy worst case ...
    assert reached < MAX_ATTEMPTS * SEQUENTIAL_ORDERS, reached
    shed = (
        order_attempts(faulty_stack, metric_names.REJECTIONS, outcome=OUTCOME_BREAKER_OPEN)
        + order_attempts(faulty_stack, metric_names.RETRY_BUDGET_EXHAUSTED)
        - before_shed
    )
    assert shed > 0, "neither the breaker nor the retry budget shed a Charge attempt"
    # ... and every attempt the order service sent reached payment exactly once: nothing in
    # between (Envoy, grpcio) added attempts of its own.
    sent = order_attempts(faulty_stack, metric_names.ATTEMPTS) - before_client
    assert sent == reached

    for cluster in PAYMENT_CLUSTERS:
        assert envoy_counter(faulty_stack, f"cluster.{cluster}.upstream_rq_retry") == 0
    # Whole-stack totals (this stack's payment only ever served these tests): Envoy's grpc_stats
    # saw exactly the Charge calls the two deployments' servers handled, all failed. Summed over
    # both clusters: each has the other deployment as its failover (ejected for its failures,
    # a deployment's share goes to the other), so a cluster's count is not one server's.
    stats = {
        outcome: sum(
            envoy_counter(faulty_stack, CHARGE_STATS.format(cluster=cluster, outcome=outcome))
            for cluster in PAYMENT_CLUSTERS
        )
        for outcome in ("failure", "success")
    }
    assert stats == {"failure": sum(after_server.values()), "success": 0}, (stats, after_server)
