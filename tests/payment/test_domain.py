from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from meshkit.errors import FailedPrecondition, InvalidArgument
from meshkit.ids import new_id
from payment_service.domain import (
    DECLINE_REASON,
    ChargeRequest,
    FaultPolicy,
    Money,
    Payment,
    PaymentState,
    after_refund,
    after_void,
    decline_reason,
    initial_state,
    validate_charge,
    validate_get,
    validate_refund,
    validate_void,
)


def _payment(state: PaymentState) -> Payment:
    return Payment(
        payment_id=new_id("pay"),
        request_id="r-1",
        order_id=new_id("ord"),
        customer_id="cust-1",
        amount=Money("USD", 100),
        state=state,
        version="v1",
    )


def test_customers_starting_with_decline_are_declined_with_a_reason() -> None:
    assert decline_reason("decline-42") == DECLINE_REASON == "card declined (test customer)"
    assert initial_state("decline") is PaymentState.DECLINED
    assert decline_reason("cust-decline") == ""
    assert initial_state("Decline-1") is PaymentState.CAPTURED


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (PaymentState.CAPTURED, PaymentState.REFUNDED),
        (PaymentState.REFUNDED, PaymentState.REFUNDED),
    ],
)
def test_refund_moves_captured_money_back_once(state: PaymentState, expected: PaymentState) -> None:
    assert after_refund(_payment(state)) is expected


@pytest.mark.parametrize("state", [PaymentState.DECLINED, PaymentState.VOIDED])
def test_nothing_to_refund_when_no_money_moved(state: PaymentState) -> None:
    with pytest.raises(FailedPrecondition, match=state.value):
        after_refund(_payment(state))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (PaymentState.CAPTURED, PaymentState.REFUNDED),
        (PaymentState.REFUNDED, PaymentState.REFUNDED),
        (PaymentState.DECLINED, PaymentState.DECLINED),
        (PaymentState.VOIDED, PaymentState.VOIDED),
    ],
)
def test_void_gives_captured_money_back_and_leaves_the_rest(
    state: PaymentState, expected: PaymentState
) -> None:
    assert after_void(_payment(state)) is expected


def test_validation_names_every_bad_field_at_once() -> None:
    bad = ChargeRequest(
        order_id="order-1", customer_id="no spaces", amount=Money("usd", 0), request_id=""
    )
    with pytest.raises(InvalidArgument) as raised:
        validate_charge(bad)
    assert {v.field for v in raised.value.violations} == {
        "order_id",
        "customer_id",
        "request_id",
        "amount.amount_minor",
        "amount.currency_code",
    }
    with pytest.raises(InvalidArgument) as raised:
        validate_void("has space", new_id("ord"))
    assert [v.field for v in raised.value.violations] == ["charge_request_id"]


@pytest.mark.parametrize(
    ("validate", "field"),
    [
        (validate_get, "payment_id"),
        (lambda value: validate_refund(new_id("pay"), value), "request_id"),
        (lambda value: validate_void(value, new_id("ord")), "charge_request_id"),
        (lambda value: validate_void("c-1", value), "order_id"),
    ],
)
@pytest.mark.parametrize("suffix", ["\n", "\x00", "A" * 100_000])
def test_an_id_with_anything_after_it_is_refused_without_being_echoed(
    validate: Callable[[str], None], field: str, suffix: str
) -> None:
    good = {"payment_id": new_id("pay"), "order_id": new_id("ord")}.get(field, "r-1")
    validate(good)
    with pytest.raises(InvalidArgument) as raised:
        validate(good + suffix)
    assert [v.field for v in raised.value.violations] == [field]
    assert len(raised.value.message) < 160


def test_fault_rate_zero_never_fails_and_never_draws() -> None:
    def no_draws() -> float:
        raise AssertionError("rate 0 must not draw")

    policy = FaultPolicy(rate=0.0, random=no_draws)
    assert not any(policy.strikes() for _ in range(100))


def test_fault_rate_one_always_fails() -> None:
    policy = FaultPolicy(rate=1.0, random=lambda: 0.999999)
    assert all(policy.strikes() for _ in range(100))


def test_a_seeded_rng_gives_a_reproducible_pattern() -> None:
    policy = FaultPolicy(rate=0.5, random=random.Random(7).random)
    reference = random.Random(7)
    expected = [reference.random() < 0.5 for _ in range(40)]
    assert [policy.strikes() for _ in range(40)] == expected
    assert True in expected
    assert False in expected


def test_latency_is_added_through_the_injected_sleep() -> None:
    slept: list[float] = []
    policy = FaultPolicy(latency_s=0.25, sleep=slept.append)
    policy.strikes()
    policy.strikes()
    assert slept == [0.25, 0.25]
    FaultPolicy(sleep=slept.append).strikes()
    assert slept == [0.25, 0.25]


def test_latency_on_a_share_of_the_calls_draws_for_it_before_the_failure() -> None:
    slept: list[float] = []
    draws = iter([0.3, 0.9, 0.6, 0.1])
    policy = FaultPolicy(
        rate=0.5, latency_s=0.1, latency_rate=0.5, random=lambda: next(draws), sleep=slept.append
    )
    # Call 1: delayed (0.3 < 0.5), not failed (0.9); call 2: not delayed (0.6), failed (0.1).
    assert [policy.strikes(), policy.strikes()] == [False, True]
    assert slept == [0.1]
    with pytest.raises(ValueError, match="latency_rate"):
        FaultPolicy(latency_rate=1.5)


@pytest.mark.parametrize(("rate", "latency_s"), [(-0.1, 0.0), (1.01, 0.0), (0.5, -1.0)])
def test_fault_policy_rejects_bad_values(rate: float, latency_s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        FaultPolicy(rate=rate, latency_s=latency_s)
