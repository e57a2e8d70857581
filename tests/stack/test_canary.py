"""The payment canary on the internal listener, where the order service's Charge calls go:
90/10 split, the x-canary pin, weights moved live."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl.stack import Stack
from meshkit.ids import new_id
from meshkit.testing import wait_until

pytestmark = pytest.mark.stack

CALLS = 1000
V2_SHARE = 0.10
#: Allowed distance from the expected v2 count, in binomial standard deviations. At 4.5 sd a
#: correct 90/10 split fails about once in 150,000 runs; a wrong split (say 80/20) never passes.
SIGMAS = 4.5
CANARY_PIN = (("x-canary", "always"),)
CHARGE_SUCCESS = "cluster.{cluster}.grpc.mesh.payment.v1.PaymentService.Charge.success"


def charge(
    stub: payment_pb2_grpc.PaymentServiceStub, metadata: Sequence[tuple[str, str]] = ()
) -> str:
    """One real Charge (its own request_id, so a new payment each time); returns its version."""
    payment = stub.Charge(
        payment_pb2.ChargeRequest(
            order_id=new_id("ord"),
            customer_id="cust-canary",
            amount=money_pb2.Money(currency_code="USD", amount_minor=100),
            request_id=new_id("req"),
        ),
        metadata=metadata,
        timeout=5,
    )
    assert payment.state == payment_pb2.PAYMENT_STATE_CAPTURED
    return str(payment.version)


def versions(
    channel: grpc.Channel, calls: int, metadata: Sequence[tuple[str, str]] = ()
) -> Counter[str]:
    stub = payment_pb2_grpc.PaymentServiceStub(channel)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return Counter(pool.map(lambda _: charge(stub, metadata), range(calls)))


def charge_successes(stack: Stack) -> dict[str, int]:
    """Envoy's per-cluster gRPC success counters (grpc_stats filter)."""
    stats = stack.envoy.get("/stats?filter=PaymentService\\.Charge\\.success")
    counts = {}
    for cluster in ("payment_v1", "payment_v2"):
        name = re.escape(CHARGE_SUCCESS.format(cluster=cluster))
        found = re.search(rf"^{name}: (\d+)$", stats, re.MULTILINE)
        counts[cluster] = int(found.group(1)) if found else 0
    return counts


def test_payment_traffic_splits_90_10_and_envoy_counts_it_per_cluster(
    stack: Stack, as_order: grpc.Channel
) -> None:
    before = charge_successes(stack)

    seen = versions(as_order, CALLS)

    assert set(seen) <= {"v1", "v2"}
    assert sum(seen.values()) == CALLS
    expected = CALLS * V2_SHARE
    bound = SIGMAS * math.sqrt(CALLS * V2_SHARE * (1 - V2_SHARE))
    assert abs(seen["v2"] - expected) <= bound, f"{seen} is not near 90/10 (±{bound:.0f})"
    # Failed gRPC calls are HTTP 200 too; grpc_stats counts gRPC outcomes per cluster.
    after = charge_successes(stack)
    assert after["payment_v1"] - before["payment_v1"] == seen["v1"]
    assert after["payment_v2"] - before["payment_v2"] == seen["v2"]


def test_the_canary_header_pins_every_call_to_v2(as_order: grpc.Channel) -> None:
    assert versions(as_order, 200, CANARY_PIN) == Counter({"v2": 200})


def _all_reach(channel: grpc.Channel, version: str) -> bool:
    return versions(channel, 20) == Counter({version: 20})


def test_weights_move_live_through_the_admin_endpoint(stack: Stack, as_order: grpc.Channel) -> None:
    try:
        stack.set_canary_weights(0, 100)
        # Envoy's workers pick a new runtime snapshot up asynchronously.
        wait_until(lambda: _all_reach(as_order, "v2"), timeout_s=10, what="all traffic on v2")
        assert versions(as_order, 200) == Counter({"v2": 200})

        stack.set_canary_weights(100, 0)
        wait_until(lambda: _all_reach(as_order, "v1"), timeout_s=10, what="all traffic on v1")
        assert versions(as_order, 200) == Counter({"v1": 200})
        # The pin still wins over a weight of 0.
        assert versions(as_order, 20, CANARY_PIN) == Counter({"v2": 20})
    finally:
        stack.set_canary_weights(90, 10)
    runtime = stack.envoy.get("/runtime")
    assert '"routing.payment.payment_v2"' in runtime
