"""PaymentService over real gRPC channels to an in-process server on port 0."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.payment.v1 import payment_pb2
from meshkit.errors import trailer_bytes
from meshkit.ids import new_id
from meshkit.limits import ERROR_TRAILER_BUDGET_BYTES
from meshkit.testing import field_violations

from .conftest import Payments, charge_request, row_count

CAPTURED = payment_pb2.PAYMENT_STATE_CAPTURED
DECLINED = payment_pb2.PAYMENT_STATE_DECLINED
REFUNDED = payment_pb2.PAYMENT_STATE_REFUNDED
VOIDED = payment_pb2.PAYMENT_STATE_VOIDED


def _rejects(call: grpc.UnaryUnaryMultiCallable, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=5)
    return raised.value


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"order_id": ""}, {"order_id"}),
        ({"order_id": "ord_123"}, {"order_id"}),
        ({"customer_id": ""}, {"customer_id"}),
        ({"customer_id": "has space"}, {"customer_id"}),
        ({"request_id": ""}, {"request_id"}),
        ({"request_id": "x" * 129}, {"request_id"}),
        ({"amount": money_pb2.Money(currency_code="USD", amount_minor=0)}, {"amount.amount_minor"}),
        (
            {"amount": money_pb2.Money(currency_code="USD", amount_minor=-5)},
            {"amount.amount_minor"},
        ),
        (
            {"amount": money_pb2.Money(currency_code="usd", amount_minor=5)},
            {"amount.currency_code"},
        ),
        (
            {"amount": money_pb2.Money(currency_code="DOLLARS", amount_minor=5)},
            {"amount.currency_code"},
        ),
        ({"amount": None}, {"amount.amount_minor", "amount.currency_code"}),
        (
            {"order_id": "", "customer_id": "", "request_id": ""},
            {"order_id", "customer_id", "request_id"},
        ),
    ],
)
def test_charge_rejects_bad_input_naming_the_field(
    payments: Payments, overrides: dict[str, object], fields: set[str]
) -> None:
    error = _rejects(payments.stub.Charge, charge_request(**overrides))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == fields
    assert all(field in (error.details() or "") for field in fields)
    assert row_count(payments.settings.data_dir) == 0


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (payment_pb2.RefundRequest(payment_id="", request_id="r-1"), {"payment_id"}),
        (payment_pb2.RefundRequest(payment_id="pay_xyz", request_id="r-1"), {"payment_id"}),
        (payment_pb2.RefundRequest(payment_id=new_id("pay"), request_id=""), {"request_id"}),
        (
            payment_pb2.RefundRequest(payment_id=new_id("ord"), request_id="bad id"),
            {"payment_id", "request_id"},
        ),
    ],
)
def test_refund_rejects_bad_input_naming_the_field(
    payments: Payments, request_: payment_pb2.RefundRequest, fields: set[str]
) -> None:
    error = _rejects(payments.stub.Refund, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == fields


@pytest.mark.parametrize("payment_id", ["", "pay_", "pay_" + "G" * 32, new_id("ord")])
def test_get_payment_rejects_bad_input_naming_the_field(
    payments: Payments, payment_id: str
) -> None:
    error = _rejects(payments.stub.GetPayment, payment_pb2.GetPaymentRequest(payment_id=payment_id))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"payment_id"}


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (
            payment_pb2.VoidChargeRequest(charge_request_id="", order_id=new_id("ord")),
            {"charge_request_id"},
        ),
        (payment_pb2.VoidChargeRequest(charge_request_id="c-1", order_id=""), {"order_id"}),
        (
            payment_pb2.VoidChargeRequest(charge_request_id="a b", order_id="ord-1"),
            {"charge_request_id", "order_id"},
        ),
    ],
)
def test_void_charge_rejects_bad_input_naming_the_field(
    payments: Payments, request_: payment_pb2.VoidChargeRequest, fields: set[str]
) -> None:
    error = _rejects(payments.stub.VoidCharge, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == fields
    assert row_count(payments.settings.data_dir) == 0


# --- Charge -------------------------------------------------------------------------------------


def test_charge_captures_and_get_payment_reads_it_back(payments: Payments) -> None:
    request = charge_request(customer_id="cust-7")
    payment = payments.stub.Charge(request, timeout=5)
    assert payment.payment_id.startswith("pay_")
    assert payment.state == CAPTURED
    assert payment.version == "v1"
    assert (payment.order_id, payment.customer_id) == (request.order_id, "cust-7")
    assert payment.amount == request.amount
    assert payment.decline_reason == ""
    got = payments.stub.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=payment.payment_id), timeout=5
    )
    assert got == payment


def test_a_declined_customer_is_a_business_outcome_not_an_error(payments: Payments) -> None:
    payment = payments.stub.Charge(charge_request(customer_id="decline-bob"), timeout=5)
    assert payment.state == DECLINED
    assert payment.decline_reason == "card declined (test customer)"


def test_get_payment_of_an_unknown_id_is_not_found(payments: Payments) -> None:
    missing = new_id("pay")
    error = _rejects(payments.stub.GetPayment, payment_pb2.GetPaymentRequest(payment_id=missing))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert missing in (error.details() or "")


@pytest.mark.parametrize("customer_id", ["cust-1", "decline-1"])
def test_a_repeated_charge_returns_the_same_payment(payments: Payments, customer_id: str) -> None:
    request = charge_request(customer_id=customer_id)
    first = payments.stub.Charge(request, timeout=5)
    again = [payments.stub.Charge(request, timeout=5) for _ in range(3)]
    assert all(p == first for p in again)
    assert row_count(payments.settings.data_dir) == 1


def test_concurrent_duplicate_charges_make_one_payment(payments: Payments) -> None:
    request = charge_request()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: payments.stub.Charge(request, timeout=10), range(48)))
    assert len({p.payment_id for p in results}) == 1
    assert row_count(payments.settings.data_dir, "request_id = ?", request.request_id) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"order_id": new_id("ord")},
        {"customer_id": "cust-2"},
        {"amount": money_pb2.Money(currency_code="USD", amount_minor=2000)},
        {"amount": money_pb2.Money(currency_code="EUR", amount_minor=1999)},
    ],
)
def test_the_same_request_id_with_another_payload_is_already_exists(
    payments: Payments, change: dict[str, object]
) -> None:
    first = charge_request()
    payments.stub.Charge(first, timeout=5)
    other = payment_pb2.ChargeRequest()
    other.CopyFrom(first)
    for name, value in change.items():
        if isinstance(value, money_pb2.Money):
            other.amount.CopyFrom(value)
        else:
            setattr(other, name, value)
    error = _rejects(payments.stub.Charge, other)
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "request_id" in (error.details() or "")
    assert first.request_id in (error.details() or "")
    assert row_count(payments.settings.data_dir) == 1


# --- Refund -------------------------------------------------------------------------------------


def _refund(payments: Payments, payment_id: str, request_id: str) -> payment_pb2.Payment:
    return payments.stub.Refund(
        payment_pb2.RefundRequest(payment_id=payment_id, request_id=request_id), timeout=5
    )


def test_refund_moves_captured_to_refunded_once(payments: Payments) -> None:
    payment = payments.stub.Charge(charge_request(), timeout=5)
    refunded = _refund(payments, payment.payment_id, "refund-1")
    assert refunded.state == REFUNDED
    assert refunded.payment_id == payment.payment_id
    assert _refund(payments, payment.payment_id, "refund-1") == refunded
    assert _refund(payments, payment.payment_id, "refund-again") == refunded
    got = payments.stub.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=payment.payment_id), timeout=5
    )
    assert got.state == REFUNDED


def test_refund_of_a_declined_payment_is_failed_precondition(payments: Payments) -> None:
    payment = payments.stub.Charge(charge_request(customer_id="decline-x"), timeout=5)
    error = _rejects(
        payments.stub.Refund,
        payment_pb2.RefundRequest(payment_id=payment.payment_id, request_id="refund-d"),
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "DECLINED" in (error.details() or "")


def test_refund_of_a_voided_payment_is_failed_precondition(payments: Payments) -> None:
    tombstone = payments.stub.VoidCharge(
        payment_pb2.VoidChargeRequest(charge_request_id="c-void", order_id=new_id("ord")),
        timeout=5,
    )
    error = _rejects(
        payments.stub.Refund,
        payment_pb2.RefundRequest(payment_id=tombstone.payment_id, request_id="refund-v"),
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "VOIDED" in (error.details() or "")


def test_refund_of_an_unknown_payment_is_not_found(payments: Payments) -> None:
    error = _rejects(
        payments.stub.Refund, payment_pb2.RefundRequest(payment_id=new_id("pay"), request_id="r")
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_a_refund_request_id_cannot_refund_a_second_payment(payments: Payments) -> None:
    first = payments.stub.Charge(charge_request(), timeout=5)
    second = payments.stub.Charge(charge_request(), timeout=5)
    _refund(payments, first.payment_id, "refund-shared")
    error = _rejects(
        payments.stub.Refund,
        payment_pb2.RefundRequest(payment_id=second.payment_id, request_id="refund-shared"),
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert first.payment_id in (error.details() or "")


# --- VoidCharge ---------------------------------------------------------------------------------


def test_void_of_a_captured_charge_refunds_it(payments: Payments) -> None:
    request = charge_request()
    payment = payments.stub.Charge(request, timeout=5)
    void = payment_pb2.VoidChargeRequest(
        charge_request_id=request.request_id, order_id=request.order_id
    )
    voided = payments.stub.VoidCharge(void, timeout=5)
    assert voided.payment_id == payment.payment_id
    assert voided.state == REFUNDED
    assert payments.stub.VoidCharge(void, timeout=5) == voided
    assert payments.stub.Charge(request, timeout=5).state == REFUNDED
    assert row_count(payments.settings.data_dir) == 1


def test_void_of_a_declined_charge_leaves_it_declined(payments: Payments) -> None:
    request = charge_request(customer_id="decline-v")
    payments.stub.Charge(request, timeout=5)
    voided = payments.stub.VoidCharge(
        payment_pb2.VoidChargeRequest(
            charge_request_id=request.request_id, order_id=request.order_id
        ),
        timeout=5,
    )
    assert voided.state == DECLINED


def test_void_before_the_charge_leaves_a_tombstone_that_a_late_charge_returns(
    payments: Payments,
) -> None:
    request = charge_request()
    void = payment_pb2.VoidChargeRequest(
        charge_request_id=request.request_id, order_id=request.order_id
    )
    tombstone = payments.stub.VoidCharge(void, timeout=5)
    assert tombstone.state == VOIDED
    assert tombstone.order_id == request.order_id
    assert tombstone.version == "v1"
    assert payments.stub.VoidCharge(void, timeout=5) == tombstone

    late = payments.stub.Charge(request, timeout=5)
    assert late.payment_id == tombstone.payment_id
    assert late.state == VOIDED
    assert row_count(payments.settings.data_dir) == 1
    assert row_count(payments.settings.data_dir, "state = 'CAPTURED'") == 0


def test_void_of_another_orders_charge_is_refused(payments: Payments) -> None:
    request = charge_request()
    payments.stub.Charge(request, timeout=5)
    error = _rejects(
        payments.stub.VoidCharge,
        payment_pb2.VoidChargeRequest(charge_request_id=request.request_id, order_id=new_id("ord")),
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "charge_request_id" in (error.details() or "")
    got = payments.stub.Charge(request, timeout=5)
    assert got.state == CAPTURED


# --- hostile input: INVALID_ARGUMENT naming a field, small trailers, no traceback -------------


def _assert_small(error: grpc.RpcError) -> None:
    details_bin = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert trailer_bytes(error.details() or "", details_bin) <= ERROR_TRAILER_BUDGET_BYTES


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"order_id": new_id("ord") + "\n"}, "order_id"),
        ({"customer_id": "alice\n"}, "customer_id"),
        ({"customer_id": "é" * 100_000}, "customer_id"),
        ({"request_id": "r-1\n"}, "request_id"),
        ({"request_id": "%" * 100_000}, "request_id"),
        (
            {"amount": money_pb2.Money(currency_code="USD\n", amount_minor=5)},
            "amount.currency_code",
        ),
        (
            {"amount": money_pb2.Money(currency_code="U" * 50_000, amount_minor=5)},
            "amount.currency_code",
        ),
        (
            {"amount": money_pb2.Money(currency_code="USD", amount_minor=-(2**63))},
            "amount.amount_minor",
        ),
    ],
)
def test_charge_refuses_hostile_input(
    payments: Payments, overrides: dict[str, object], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = _rejects(payments.stub.Charge, charge_request(**overrides))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {field}
    _assert_small(error)
    assert not [r for r in caplog.records if r.exc_info]
    assert row_count(payments.settings.data_dir) == 0


def test_charge_of_the_largest_amount_is_an_ordinary_charge(payments: Payments) -> None:
    largest = money_pb2.Money(currency_code="USD", amount_minor=2**63 - 1)
    payment = payments.stub.Charge(charge_request(amount=largest), timeout=5)
    assert payment.state == CAPTURED
    assert payment.amount == largest


@pytest.mark.parametrize("payment_id", [new_id("pay") + "\n", "pay_" + "0" * 100_000, "\x00"])
def test_get_payment_and_refund_refuse_a_hostile_id(payments: Payments, payment_id: str) -> None:
    for error in (
        _rejects(payments.stub.GetPayment, payment_pb2.GetPaymentRequest(payment_id=payment_id)),
        _rejects(
            payments.stub.Refund, payment_pb2.RefundRequest(payment_id=payment_id, request_id="r")
        ),
    ):
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(error)) == {"payment_id"}
        _assert_small(error)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (
            payment_pb2.VoidChargeRequest(charge_request_id="c-1\n", order_id=new_id("ord")),
            {"charge_request_id"},
        ),
        (
            payment_pb2.VoidChargeRequest(charge_request_id="c" * 20_000, order_id="o" * 20_000),
            {"charge_request_id", "order_id"},
        ),
    ],
)
def test_void_charge_refuses_hostile_ids(
    payments: Payments, request_: payment_pb2.VoidChargeRequest, fields: set[str]
) -> None:
    error = _rejects(payments.stub.VoidCharge, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == fields
    _assert_small(error)


@pytest.mark.parametrize("method", ["Charge", "Refund", "GetPayment", "VoidCharge"])
@pytest.mark.parametrize("payload", [b"\x0a\x02\xff\xfe", b"\xff\xff\xff\xff", b"\x12\x10ab"])
def test_bytes_that_are_not_the_request_are_invalid_argument(
    payments: Payments, method: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{payments.running.port}") as channel:
        call = channel.unary_unary(f"/mesh.payment.v1.PaymentService/{method}")
        error = _rejects(call, payload)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert set(field_violations(error)) == {"request"}
    assert not [r for r in caplog.records if r.exc_info]
