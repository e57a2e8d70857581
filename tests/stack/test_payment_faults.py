"""Payment failing 10%, 50% and 100% of its Charges: what the order service's policy makes of it.

Each scenario is a mesh of its own with PAYMENT_FAULT_RATE set on both payment deployments,
driven through the edge by one client at 8 in flight, as a user would try it. The policy is
order_service/resilience.yaml: 5 attempts, a ratio retry budget (retries <= 20% of the calls of
the last 10 s, plus 1/s), a per-method breaker that opens at 20 failures in a row or 80% of a
10 s window.

* 10%, transient: retried away. Each order fails only if every attempt does. A6's
  `retryThrottling {maxTokens: 10, tokenRatio: 0.1}` confirmed 93.5% here, as it stops all
  retries once more than ~9% of attempts fail.
* 50%, sick: no retry storm (the budget caps payment's load at ~1.2x), and the breaker stays
  closed, so at least the first attempts' half of the orders confirm.
* 100%, down: the breaker opens and orders fail fast, with nothing charged and stock released.

After each, once recovery has ended every order, stock and money moved exactly once per
CONFIRMED order and not at all for a FAILED one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import running_stack
from resilience import OUTCOME_BREAKER_OPEN, metric_names

from ._probes import assert_settled_and_moved_once, metric_sum, payment_handled, stock

pytestmark = pytest.mark.stack

IN_FLIGHT = 8
SKUS = [f"SKU-{n:04d}" for n in range(1, 21)]
CHARGE = "/mesh.payment.v1.PaymentService/Charge"
CONFIRMED = order_pb2.ORDER_STATUS_CONFIRMED


def faulty_payment(tmp: pytest.TempPathFactory, rate: str) -> Iterator[Stack]:
    env = {
        "PAYMENT_FAULT_RATE": rate,
        "PAYMENT_FAULT_CODE": "UNAVAILABLE",
        "INVENTORY_SEED_STOCK": "100000",
        # One customer places every order: no per-customer rate limit.
        "ORDER_RATE_PER_S": "0",
    }
    with running_stack(tmp.mktemp(f"payment-fault-{rate}"), env) as running:
        yield running


@pytest.fixture(scope="module")
def flaky_payment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from faulty_payment(tmp_path_factory, "0.1")


@pytest.fixture(scope="module")
def sick_payment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from faulty_payment(tmp_path_factory, "0.5")


@pytest.fixture(scope="module")
def dead_payment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from faulty_payment(tmp_path_factory, "1")


@dataclass(frozen=True, slots=True)
class Load:
    orders: list[order_pb2.Order]
    charge_calls: int  # logical Charge calls the order service made
    reached: int  # Charge attempts payment's servers handled

    @property
    def confirmed(self) -> int:
        return sum(order.status == CONFIRMED for order in self.orders)

    def failures(self) -> list[str]:
        return [o.failure_reason for o in self.orders if o.status != CONFIRMED]


def charge_metric(stack: Stack, name: str, **labels: str) -> int:
    port = stack.config.ports["ORDER_METRICS_PORT"]
    return int(metric_sum(port, name, target="payment", method=CHARGE, **labels))


def place_at_8_in_flight(edge: grpc.Channel, prefix: str, count: int) -> list[order_pb2.Order]:
    """``count`` new orders of one customer through the edge, 8 in flight, over the SKUs."""
    stub = order_pb2_grpc.OrderServiceStub(edge)

    def place(i: int) -> order_pb2.Order:
        order: order_pb2.Order = stub.CreateOrder(
            order_pb2.CreateOrderRequest(
                customer_id="cust-faults",
                request_id=f"{prefix}-{i}",
                lines=[money_pb2.Line(sku=SKUS[i % len(SKUS)], quantity=1)],
            ),
            timeout=30,
        )
        return order

    with futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
        return list(pool.map(place, range(count)))


def place_orders(stack: Stack, count: int) -> Load:
    """``count`` orders at 8 in flight; once recovery has ended them all, stock and money
    moved exactly once per CONFIRMED order."""
    run = uuid.uuid4().hex[:8]
    calls_before = charge_metric(stack, metric_names.CALLS)
    reached_before = sum(payment_handled(stack, "Charge").values())
    with grpc.insecure_channel(stack.config.edge_target) as edge:
        before, since_us = stock(edge, SKUS), time.time_ns() // 1000
        placed = place_at_8_in_flight(edge, f"faults-{run}", count)
        assert_settled_and_moved_once(stack, edge, before, since_us)
    return Load(
        orders=placed,
        charge_calls=charge_metric(stack, metric_names.CALLS) - calls_before,
        reached=sum(payment_handled(stack, "Charge").values()) - reached_before,
    )


def test_ten_percent_unavailable_confirms_nearly_every_order_at_little_extra_load(
    flaky_payment: Stack,
) -> None:
    load = place_orders(flaky_payment, 800)

    # Expected: none of 800 orders loses all five attempts; 99.5% allows 4.
    assert load.confirmed >= 0.995 * 800, load.failures()
    assert load.charge_calls == 800
    # 1 + 0.1 + 0.01 + ... attempts per Charge on average: the retries, and nothing more.
    assert 800 < load.reached <= 1.15 * load.charge_calls, (load.reached, load.charge_calls)


def test_half_failing_gets_no_retry_storm_and_still_confirms_the_first_attempts_half(
    sick_payment: Stack,
) -> None:
    load = place_orders(sick_payment, 600)

    assert load.charge_calls == 600
    assert load.reached <= 1.25 * load.charge_calls, (load.reached, load.charge_calls)
    # The first attempts alone would confirm 50%; the budget's retries add to that, and the
    # breaker does not take it away. 45% leaves room for chance (sd ~2% at 600 orders).
    assert load.confirmed >= 0.45 * 600, (load.confirmed, load.failures()[:3])
    assert charge_metric(sick_payment, metric_names.REJECTIONS, outcome=OUTCOME_BREAKER_OPEN) == 0


def test_a_dead_payment_opens_the_breaker_and_orders_fail_fast_with_nothing_charged(
    dead_payment: Stack,
) -> None:
    first = place_orders(dead_payment, 40)  # opens the breaker: 20 failed attempts in a row
    assert first.confirmed == 0
    load = place_orders(dead_payment, 200)

    assert load.confirmed == 0
    refused = [r for r in load.failures() if "circuit breaker" in r]
    # Between probes (0.5, 1, 2, 2, ... s apart) every Charge is refused before it leaves.
    assert len(refused) >= 0.9 * 200, load.failures()[:3]
    assert load.reached <= 0.1 * load.charge_calls, (load.reached, load.charge_calls)
    assert all(r.startswith("payment unavailable") for r in load.failures())


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One customer places every order: no per-customer rate limit.
    env = {"INVENTORY_SEED_STOCK": "100000", "ORDER_RATE_PER_S": "0"}
    with running_stack(tmp_path_factory.mktemp("payment-outage"), env) as running:
        yield running


def test_after_a_payment_outage_every_order_ends_within_15_s_of_payment_returning(
    outage_stack: Stack,
) -> None:
    """Both payment deployments stopped, orders placed, payment started again: the orders
    whose Charge went out wait for their VoidCharge, which the breaker's probes and recovery's
    retries get through soon after payment is back."""
    run = uuid.uuid4().hex[:8]
    with grpc.insecure_channel(outage_stack.config.edge_target) as edge:
        before, since_us = stock(edge, SKUS), time.time_ns() // 1000
        outage_stack.supervisor.ctl("stop", "payment_v1", "payment_v2")
        during = place_at_8_in_flight(edge, f"outage-{run}", 100)
        assert not any(order.status == CONFIRMED for order in during)
        refused = [o for o in during if "circuit breaker" in o.failure_reason]
        assert len(refused) >= 50, [o.failure_reason for o in during][:3]  # failing fast

        outage_stack.supervisor.ctl("start", "payment_v1", "payment_v2")
        assert_settled_and_moved_once(outage_stack, edge, before, since_us, timeout_s=15)
