"""serve(): faults, health, reflection, restarts and two deployments on one database."""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh.payment.v1 import payment_pb2
from meshkit.ids import new_id
from payment_service.server import SERVICE_NAME

from .conftest import Payments, charge_request, row_count

Start = Callable[..., Payments]


def _code(payments: Payments, request: payment_pb2.ChargeRequest) -> grpc.StatusCode:
    try:
        payments.stub.Charge(request, timeout=5)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
def test_fault_rate_one_fails_every_charge_with_the_configured_code(
    start: Start, code: grpc.StatusCode
) -> None:
    payments = start(fault_rate=1.0, fault_code=code)
    for _ in range(10):
        with pytest.raises(grpc.RpcError) as raised:
            payments.stub.Charge(charge_request(), timeout=5)
        assert raised.value.code() is code
        assert raised.value.details() == "injected fault (PAYMENT_FAULT_RATE=1.0)"
    assert row_count(payments.settings.data_dir) == 0


def test_faults_hit_charge_only_so_compensation_still_works(start: Start) -> None:
    payments = start(fault_rate=1.0)
    order_id = new_id("ord")
    void = payment_pb2.VoidChargeRequest(charge_request_id="charge-x", order_id=order_id)
    tombstone = payments.stub.VoidCharge(void, timeout=5)
    assert tombstone.state == payment_pb2.PAYMENT_STATE_VOIDED
    got = payments.stub.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=tombstone.payment_id), timeout=5
    )
    assert got == tombstone


def test_fault_rate_zero_fails_nothing(start: Start) -> None:
    payments = start(fault_rate=0.0)
    codes = {_code(payments, charge_request()) for _ in range(20)}
    assert codes == {grpc.StatusCode.OK}
    assert row_count(payments.settings.data_dir) == 20


def test_a_seeded_rng_gives_the_expected_failure_pattern(start: Start) -> None:
    payments = start(fault_rate=0.5, fault_code=grpc.StatusCode.ABORTED, rng=random.Random(2024))
    reference = random.Random(2024)
    expected = [
        grpc.StatusCode.ABORTED if reference.random() < 0.5 else grpc.StatusCode.OK
        for _ in range(30)
    ]
    observed = [_code(payments, charge_request()) for _ in range(30)]
    assert observed == expected
    assert row_count(payments.settings.data_dir) == expected.count(grpc.StatusCode.OK)
    assert {grpc.StatusCode.OK, grpc.StatusCode.ABORTED} == set(expected)


def test_latency_is_added_to_every_charge_and_nothing_else(start: Start) -> None:
    slept: list[float] = []
    payments = start(latency_ms=1500, sleep=slept.append)
    request = charge_request()
    payment = payments.stub.Charge(request, timeout=5)
    payments.stub.Charge(request, timeout=5)
    payments.stub.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=payment.payment_id), timeout=5
    )
    payments.stub.Refund(
        payment_pb2.RefundRequest(payment_id=payment.payment_id, request_id="r-lat"), timeout=5
    )
    assert slept == [1.5, 1.5]


def test_health_is_serving_for_the_service_and_overall(payments: Payments) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{payments.running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_payment_service(payments: Payments) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{payments.running.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert SERVICE_NAME == "mesh.payment.v1.PaymentService"
    assert SERVICE_NAME in names


def test_a_restart_keeps_every_payment(start: Start) -> None:
    first = start()
    captured = first.stub.Charge(charge_request(), timeout=5)
    request = charge_request(customer_id="decline-r")
    declined = first.stub.Charge(request, timeout=5)
    first.running.stop()

    second = start()
    got = second.stub.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=captured.payment_id), timeout=5
    )
    assert got == captured
    assert second.stub.Charge(request, timeout=5) == declined


def test_v1_and_v2_share_one_database_and_keep_the_creator_version(start: Start) -> None:
    v1 = start(version="v1")
    v2 = start(version="v2")
    request = charge_request()
    on_v1 = v1.stub.Charge(request, timeout=5)
    on_v2 = v2.stub.Charge(request, timeout=5)
    assert on_v1.version == "v1"
    assert on_v2 == on_v1
    fresh = v2.stub.Charge(charge_request(), timeout=5)
    assert fresh.version == "v2"
    got = v1.stub.GetPayment(payment_pb2.GetPaymentRequest(payment_id=fresh.payment_id), timeout=5)
    assert got == fresh
