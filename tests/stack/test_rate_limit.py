"""The per-customer rate limit through the Envoy edge: past its burst a customer's new orders
are RESOURCE_EXHAUSTED with RetryInfo and the pushback trailer; other customers, and retries of
the customer's accepted orders, go through.

A mesh of its own, with one order per 100 s after a burst of 3, so how long the calls take
never lets one more order in (at the default 10/s a slow machine's loop might never be over).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.errors import PUSHBACK_HEADER
from order_service import metric_names as m

from ._probes import metric_sum, stock

pytestmark = pytest.mark.stack

BURST = 3
INTERVAL_MS = 100_000
SKU = "SKU-0021"


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"ORDER_RATE_PER_S": str(1000 / INTERVAL_MS), "ORDER_RATE_BURST": str(BURST)}
    with running_stack(tmp_path_factory.mktemp("rate-limit"), env) as running:
        yield running


def order(customer_id: str, request_id: str) -> order_pb2.CreateOrderRequest:
    return order_pb2.CreateOrderRequest(
        customer_id=customer_id,
        request_id=request_id,
        lines=[money_pb2.Line(sku=SKU, quantity=1)],
    )


def decisions(stack: Stack, outcome: str) -> int:
    port = stack.config.ports["ORDER_METRICS_PORT"]
    return int(metric_sum(port, m.RATE_LIMIT_DECISIONS, outcome=outcome))


def test_past_its_burst_a_customer_is_told_when_to_come_back_and_others_are_not(
    limited_stack: Stack,
) -> None:
    greedy, other = f"cust-greedy-{uuid.uuid4().hex[:8]}", f"cust-other-{uuid.uuid4().hex[:8]}"
    limited_before = decisions(limited_stack, "limited")
    with grpc.insecure_channel(limited_stack.config.edge_target) as edge:
        orders = order_pb2_grpc.OrderServiceStub(edge)
        stock_before = stock(edge, [SKU])[SKU]
        placed = [
            orders.CreateOrder(order(greedy, f"{greedy}-{n}"), timeout=10) for n in range(BURST)
        ]
        with pytest.raises(grpc.RpcError) as caught:
            orders.CreateOrder(order(greedy, f"{greedy}-{BURST}"), timeout=10)
        # The accepted orders' retries are answered, at the limit as before it.
        again = orders.CreateOrder(order(greedy, f"{greedy}-0"), timeout=10)
        others = orders.CreateOrder(order(other, f"{other}-0"), timeout=10)
        stock_after = stock(edge, [SKU])[SKU]

    assert [p.status for p in placed] == [order_pb2.ORDER_STATUS_CONFIRMED] * BURST
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Envoy passes the trailer on: gRPC's own retries and the resilience library read it.
    pushback_ms = int(dict(error.trailing_metadata())[PUSHBACK_HEADER])
    assert INTERVAL_MS - 30_000 < pushback_ms <= INTERVAL_MS
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == pushback_ms
    assert error.details() == (
        f"customer {greedy!r} is over the order rate limit (0.01/s per customer,"
        f" bursts of {BURST}); try again in {pushback_ms} ms"
    )

    assert again == placed[0]
    assert others.status == order_pb2.ORDER_STATUS_CONFIRMED
    # The refused order moved nothing: the burst and the other customer's order did.
    assert stock_before - stock_after == BURST + 1
    assert decisions(limited_stack, "limited") - limited_before == 1
