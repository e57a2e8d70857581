"""Envoy honours the caller's deadline instead of its 15 s default route timeout."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl.testing import running_stack
from meshkit.ids import new_id
from meshkit.tls import WorkloadTls

pytestmark = pytest.mark.stack

#: Just over Envoy's default route timeout (15 s).
SLOW_CHARGE_MS = 15_500


def test_a_call_slower_than_envoys_default_route_timeout_completes_within_its_deadline(
    tmp_path: Path,
) -> None:
    # max_stream_duration.grpc_timeout_header_max: 0s makes Envoy use the client's
    # grpc-timeout; without it this call would end UNAVAILABLE ("upstream request timeout")
    # at 15 s although its deadline is 30 s.
    env = {"PAYMENT_LATENCY_MS": str(SLOW_CHARGE_MS)}
    with running_stack(tmp_path, env) as stack:
        order = WorkloadTls.load(stack.config.certs_dir, "order")
        # Charge is the order service's to call, on the internal listener.
        channel = grpc.secure_channel(stack.config.internal_target, order.channel_credentials())
        payment = payment_pb2_grpc.PaymentServiceStub(channel).Charge(
            payment_pb2.ChargeRequest(
                order_id=new_id("ord"),
                customer_id="cust-slow",
                amount=money_pb2.Money(currency_code="USD", amount_minor=100),
                request_id=new_id("req"),
            ),
            timeout=30,
        )
        channel.close()
    assert payment.state == payment_pb2.PAYMENT_STATE_CAPTURED
