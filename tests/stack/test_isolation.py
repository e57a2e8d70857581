"""A slow payment cannot starve the order service's reads and health checks.

Payment answers every Charge 1.5 s late (PAYMENT_LATENCY_MS) while 64 clients place orders.
CreateOrder holds one of order's worker threads for as long as its saga runs; capped at
ORDER_CREATE_MAX_IN_FLIGHT (24 of 32 threads), the calls over the cap are refused at once with
RESOURCE_EXHAUSTED and a pushback, and GetOrder and the health checks keep threads of their
own. Without the cap, GetOrder's p99 went from 12.6 ms to 2.5 s here and 14 of 17 health
checks timed out.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.errors import PUSHBACK_HEADER

from ._probes import assert_settled_and_moved_once, envoy_counter, stock

pytestmark = pytest.mark.stack

WRITERS = 64
LOAD_S = 6.0
CALL_TIMEOUT_S = 5.0
#: A read that waited in the queue behind the slow writes would take seconds.
QUICK_READ_S = 1.0
ENVOY_CHECK_FAILURES = "cluster.order.health_check.failure"


@pytest.fixture(scope="module")
def slow_payment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One customer's 64 writers: no per-customer rate limit, so only the cap refuses calls.
    env = {
        "PAYMENT_LATENCY_MS": "1500",
        "INVENTORY_SEED_STOCK": "100000",
        "ORDER_RATE_PER_S": "0",
    }
    with running_stack(tmp_path_factory.mktemp("slow-payment"), env) as running:
        yield running


def test_reads_and_health_are_served_while_slow_writes_are_capped(slow_payment: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()
    writes: Counter[str] = Counter()
    pushbacks: set[str] = set()
    lock = threading.Lock()

    with grpc.insecure_channel(slow_payment.config.edge_target) as edge:
        skus = ["SKU-0001", "SKU-0002"]
        before, since_us = stock(edge, skus), time.time_ns() // 1000
        orders = order_pb2_grpc.OrderServiceStub(edge)
        health = health_pb2_grpc.HealthStub(edge)
        known = orders.CreateOrder(
            order_pb2.CreateOrderRequest(
                customer_id="cust-slow",
                request_id=f"slow-{run}-first",
                lines=[money_pb2.Line(sku="SKU-0001", quantity=1)],
            ),
            timeout=30,
        )

        def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    orders.CreateOrder(
                        order_pb2.CreateOrderRequest(
                            customer_id="cust-slow",
                            request_id=f"slow-{run}-{n}-{i}",
                            lines=[money_pb2.Line(sku="SKU-0002", quantity=1)],
                        ),
                        timeout=30,
                    )
                    outcome = "OK"
                except grpc.RpcError as error:
                    outcome = error.code().name
                    pushback = dict(error.trailing_metadata() or ()).get(PUSHBACK_HEADER)
                    if pushback is not None:
                        with lock:
                            pushbacks.add(str(pushback))
                        time.sleep(int(pushback) / 1000)  # as a well-behaved client would
                with lock:
                    writes[outcome] += 1

        writers = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for thread in writers:
            thread.start()
        reads: Counter[str] = Counter()
        read_seconds: list[float] = []
        checks: Counter[str] = Counter()
        try:
            time.sleep(2.0)  # every writer's first order is in its Charge by now
            failed_checks = envoy_counter(slow_payment, ENVOY_CHECK_FAILURES)
            until = time.monotonic() + LOAD_S
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    got = orders.GetOrder(
                        order_pb2.GetOrderRequest(order_id=known.order_id), timeout=CALL_TIMEOUT_S
                    )
                    reads["OK" if got.order_id == known.order_id else "WRONG"] += 1
                except grpc.RpcError as error:
                    reads[error.code().name] += 1
                read_seconds.append(time.monotonic() - started)
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                    checks[health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)] += 1
                except grpc.RpcError as error:
                    checks[error.code().name] += 1
                time.sleep(0.05)
            failed_checks = envoy_counter(slow_payment, ENVOY_CHECK_FAILURES) - failed_checks
        finally:
            stop.set()
            for thread in writers:
                thread.join(60)
        assert_settled_and_moved_once(slow_payment, edge, before, since_us)

    assert set(reads) == {"OK"}, reads
    # Queued behind the slow writes, a read would wait for one of them to end (seconds);
    # a few slow ones are the two cores being busy.
    quick = sum(seconds < QUICK_READ_S for seconds in read_seconds)
    assert quick >= 0.9 * len(read_seconds), sorted(read_seconds)[-5:]
    assert set(checks) == {"SERVING"}, checks
    # Envoy's own checks of order (1 s timeout) never failed either.
    assert failed_checks == 0
    # The writes did go on, capped: some served, the rest refused with a pushback.
    assert writes["OK"] > 0, writes
    assert writes["RESOURCE_EXHAUSTED"] > 0, writes
    assert pushbacks == {"100"}
