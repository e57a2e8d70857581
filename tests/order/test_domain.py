"""The pure rules: validation, fingerprint, and the saga's state table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from meshkit.errors import FieldViolation, InvalidArgument, Validator
from meshkit.ids import new_id
from meshkit.limits import (
    MAX_CUSTOMER_ID_LENGTH,
    MAX_FIELD_VIOLATIONS,
    MAX_REQUEST_ID_LENGTH,
    MAX_SKU_LENGTH,
)
from order_service import domain
from order_service.domain import (
    Line,
    Money,
    Order,
    Outcome,
    Reason,
    Status,
    Step,
    StepResult,
    advance,
    ending,
    failure_class,
    validate_create,
)


def test_valid_request_becomes_a_new_order() -> None:
    new = validate_create("cust-1", [("SKU-0001", 2), ("SKU-0002", 1)], "req-1")
    assert new.lines == (Line("SKU-0001", 2), Line("SKU-0002", 1))
    assert new.customer_id == "cust-1"
    assert new.request_id == "req-1"


def test_every_violation_is_collected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_create(
            "bad customer!",
            [("SKU-0001", 0), ("sku lower", 1), ("SKU-0001", 1001)],
            "",
        )
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "customer_id",
        "request_id",
        "lines[0].quantity",
        "lines[1].sku",
        "lines[2].sku",  # duplicates lines[0]
        "lines[2].quantity",
    }


@pytest.mark.parametrize("count", [0, domain.MAX_LINES + 1])
def test_line_count_is_bounded(count: int) -> None:
    lines = [(f"SKU-{i:04d}", 1) for i in range(count)]
    with pytest.raises(InvalidArgument) as caught:
        validate_create("c", lines, "r")
    assert [v.field for v in caught.value.violations] == ["lines"]


def _violations(customer_id: str, lines: list[tuple[str, int]], request_id: str) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        validate_create(customer_id, lines, request_id)
    return {v.field: v.description for v in caught.value.violations}


@pytest.mark.parametrize(
    ("customer_id", "sku", "request_id", "field"),
    [
        ("alice\n", "SKU-0001", "r1", "customer_id"),
        ("alice", "SKU-0001\n", "r1", "lines[0].sku"),
        ("alice", "SKU-0001", "r1\n", "request_id"),
        ("alice\x00", "SKU-0001", "r1", "customer_id"),
        ("alice", "SKU-\uff10\uff10\uff10\uff11", "r1", "lines[0].sku"),  # fullwidth digits
    ],
)
def test_a_trailing_newline_or_other_character_is_refused(
    customer_id: str, sku: str, request_id: str, field: str
) -> None:
    assert set(_violations(customer_id, [(sku, 1)], request_id)) == {field}


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("customer_id", MAX_CUSTOMER_ID_LENGTH),
        ("request_id", MAX_REQUEST_ID_LENGTH),
        ("lines[0].sku", MAX_SKU_LENGTH),
    ],
)
def test_a_value_over_its_limit_is_refused_by_length_naming_the_limit(
    field: str, limit: int
) -> None:
    value = "A" * 100_000
    args = {"customer_id": "alice", "request_id": "r1", "lines[0].sku": "SKU-0001"}
    args[field] = value
    found = _violations(args["customer_id"], [(args["lines[0].sku"], 1)], args["request_id"])
    assert found == {field: f"must be at most {limit} characters, got 100000"}


def test_an_echoed_value_is_cut_short() -> None:
    found = _violations("a" * 60 + "!", [("SKU-0001", 1)], "r1")
    assert found["customer_id"].endswith("got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'...")


@pytest.mark.parametrize("quantity", [-(2**31), -1, 0, domain.MAX_QUANTITY + 1, 2**31 - 1])
def test_extreme_quantities_are_refused(quantity: int) -> None:
    assert set(_violations("alice", [("SKU-0001", quantity)], "r1")) == {"lines[0].quantity"}


class _Recording(Sequence[tuple[str, int]]):
    """``count`` bad lines, counting how many validation reads."""

    def __init__(self, count: int) -> None:
        self._count = count
        self.read = 0

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            taken = len(range(*index.indices(self._count)))
            self.read += taken
            return [("bad", 0)] * taken
        self.read += 1
        return ("bad", 0)


def test_a_huge_order_is_refused_from_its_first_lines() -> None:
    lines = _Recording(10_000)
    with pytest.raises(InvalidArgument) as caught:
        validate_create("alice", lines, "r1")
    assert lines.read == domain.MAX_LINES
    error = caught.value
    assert error.violations[0].field == "lines"
    assert len(error.violations) == MAX_FIELD_VIOLATIONS
    # lines, then a sku and a quantity for each line read
    assert error.omitted == 1 + 2 * domain.MAX_LINES - MAX_FIELD_VIOLATIONS


def test_a_valid_order_id_passes_and_a_trailing_newline_does_not() -> None:
    order_id = new_id("ord")
    for value, ok in [(order_id, True), (order_id + "\n", False), (order_id.upper(), False)]:
        validator = Validator()
        domain.check_order_id(validator, value)
        assert validator.ok is ok, value


def test_fingerprint_ignores_line_order_but_not_content() -> None:
    a = domain.fingerprint("c", [Line("SKU-0001", 1), Line("SKU-0002", 2)])
    b = domain.fingerprint("c", [Line("SKU-0002", 2), Line("SKU-0001", 1)])
    assert a == b
    assert a != domain.fingerprint("c", [Line("SKU-0001", 1), Line("SKU-0002", 3)])
    assert a != domain.fingerprint("d", [Line("SKU-0001", 1), Line("SKU-0002", 2)])


def _order(step: Step = Step.RESERVE) -> Order:
    return Order(
        order_id="ord_" + "0" * 32,
        request_id="r",
        fingerprint="f",
        customer_id="c",
        lines=(Line("SKU-0001", 1),),
        step=step,
    )


def test_happy_path_walks_reserve_charge_commit() -> None:
    total = Money("USD", 2899)
    order = advance(_order(), StepResult(outcome=Outcome.OK, reservation_id="res_1", total=total))
    assert (order.step, order.reservation_id, order.total) == (Step.CHARGE, "res_1", total)
    order = advance(order, StepResult(outcome=Outcome.OK, payment_id="pay_1"))
    assert (order.step, order.payment_id) == (Step.COMMIT, "pay_1")
    order = advance(order, StepResult(outcome=Outcome.OK))
    assert (order.status, order.step, order.failure_reason) == (Status.CONFIRMED, Step.DONE, "")


@pytest.mark.parametrize(
    ("step", "outcome", "target"),
    [
        (Step.RESERVE, Outcome.DECLINED, Status.FAILED),
        (Step.RESERVE, Outcome.REJECTED, Status.FAILED),
        (Step.RESERVE, Outcome.INVALID, Status.FAILED),
        (Step.RESERVE, Outcome.UNKNOWN, Step.RELEASE),
        (Step.CHARGE, Outcome.DECLINED, Step.RELEASE),
        (Step.CHARGE, Outcome.REJECTED, Step.RELEASE),
        (Step.CHARGE, Outcome.UNKNOWN, Step.VOID_CHARGE),
        # Refused before it left: nothing was charged, so nothing to void.
        (Step.RESERVE, Outcome.NOT_SENT, Status.FAILED),
        (Step.CHARGE, Outcome.NOT_SENT, Step.RELEASE),
        (Step.COMMIT, Outcome.NOT_SENT, Step.COMMIT),
        (Step.VOID_CHARGE, Outcome.NOT_SENT, Step.VOID_CHARGE),
        (Step.RELEASE, Outcome.NOT_SENT, Step.RELEASE),
        (Step.REFUND, Outcome.NOT_SENT, Step.REFUND),
        (Step.COMMIT, Outcome.DECLINED, Step.REFUND),
        (Step.COMMIT, Outcome.UNKNOWN, Step.COMMIT),
        (Step.VOID_CHARGE, Outcome.OK, Step.RELEASE),
        (Step.VOID_CHARGE, Outcome.UNKNOWN, Step.VOID_CHARGE),
        (Step.RELEASE, Outcome.OK, Status.FAILED),
        (Step.RELEASE, Outcome.UNKNOWN, Step.RELEASE),
        (Step.REFUND, Outcome.OK, Status.FAILED),
        (Step.REFUND, Outcome.REJECTED, Step.REFUND),
    ],
)
def test_failures_lead_to_compensation_or_stay(
    step: Step, outcome: Outcome, target: Step | Status
) -> None:
    order = advance(_order(step), StepResult(outcome=outcome, reason="why"))
    if isinstance(target, Status):
        assert (order.status, order.step) == (target, Step.DONE)
    else:
        assert (order.status, order.step) == (Status.PENDING, target)


def test_first_failure_reason_survives_compensation() -> None:
    order = advance(
        _order(Step.CHARGE),
        StepResult(outcome=Outcome.UNKNOWN, reason="payment unavailable: UNAVAILABLE"),
    )
    order = advance(order, StepResult(outcome=Outcome.UNKNOWN, reason="UNAVAILABLE: down"))
    assert order.step is Step.VOID_CHARGE  # stuck, reason unchanged
    order = advance(order, StepResult(outcome=Outcome.OK))
    order = advance(order, StepResult(outcome=Outcome.OK))
    assert order.status is Status.FAILED
    assert order.failure_reason == "payment unavailable: UNAVAILABLE"


def test_a_stuck_forward_step_records_no_reason() -> None:
    order = advance(_order(Step.COMMIT), StepResult(outcome=Outcome.UNKNOWN, reason="down"))
    assert (order.status, order.step, order.failure_reason) == (Status.PENDING, Step.COMMIT, "")


def test_invalid_lines_fail_the_order_with_the_reason_and_keep_the_violations() -> None:
    refusal = StepResult(
        outcome=Outcome.INVALID,
        reason="inventory refused the lines: lines[0].sku: unknown SKU",
        violations=(FieldViolation("lines[0].sku", "unknown SKU"),),
    )
    order = advance(_order(), refusal)
    assert (order.status, order.step) == (Status.FAILED, Step.DONE)
    assert order.failure_reason == "inventory refused the lines: lines[0].sku: unknown SKU"
    assert (order.reservation_id, order.payment_id, order.total) == ("", "", None)


def test_finished_orders_do_not_move() -> None:
    done = advance(_order(), StepResult(outcome=Outcome.DECLINED, reason="out of stock"))
    assert done.status is Status.FAILED
    with pytest.raises(ValueError, match="not PENDING"):
        advance(done, StepResult(outcome=Outcome.OK))


def test_reason_does_not_repeat_its_kind() -> None:
    assert domain.reason("out of stock", "out of stock: SKU-0001 (requested 5, available 2)") == (
        "out of stock: SKU-0001 (requested 5, available 2)"
    )
    assert domain.reason("payment declined", "card refused") == "payment declined: card refused"
    assert domain.reason("payment declined") == "payment declined"


def test_only_compensations_are_compensating() -> None:
    assert {s for s in Step if s.compensating} == {Step.VOID_CHARGE, Step.RELEASE, Step.REFUND}


def test_only_the_charge_position_goes_unsaved() -> None:
    reserved = advance(
        _order(), StepResult(outcome=Outcome.OK, reservation_id="res_1", total=Money("USD", 1))
    )
    assert reserved.step is Step.CHARGE
    assert not domain.must_save(reserved)
    assert domain.must_save(advance(reserved, StepResult(outcome=Outcome.OK, payment_id="p")))
    assert domain.must_save(advance(reserved, StepResult(outcome=Outcome.UNKNOWN)))
    assert all(domain.must_save(_order(step)) for step in Step if step is not Step.CHARGE)


@pytest.mark.parametrize(
    ("failure_reason", "reason"),
    [
        ("out of stock: SKU-0006 has 3", Reason.OUT_OF_STOCK),
        ("payment declined: card declined", Reason.DECLINED),
        ("inventory refused the lines: lines[0].sku: unknown SKU", Reason.INVALID),
        ("payment unavailable: UNAVAILABLE", Reason.DEPENDENCY_UNAVAILABLE),
        ("inventory unavailable: DEADLINE_EXCEEDED", Reason.DEPENDENCY_UNAVAILABLE),
        ("inventory unavailable at commit", Reason.DEPENDENCY_UNAVAILABLE),
        ("payment rejected: FAILED_PRECONDITION: no", Reason.DEPENDENCY_REJECTED),
        ("inventory rejected the order: reservation RELEASED", Reason.DEPENDENCY_REJECTED),
        ("something else", Reason.OTHER),
    ],
)
def test_a_failure_reason_falls_in_the_class_of_its_kind(
    failure_reason: str, reason: Reason
) -> None:
    assert failure_class(failure_reason) is reason


def test_only_the_business_and_the_caller_choose_an_end() -> None:
    assert {r for r in Reason if r.chosen} == {
        Reason.NONE,
        Reason.DECLINED,
        Reason.OUT_OF_STOCK,
        Reason.INVALID,
    }


def test_a_run_ends_for_the_reason_its_order_shows() -> None:
    assert ending(replace(_order(), status=Status.CONFIRMED, step=Step.DONE)) is Reason.NONE
    failed = replace(_order(), status=Status.FAILED, step=Step.DONE, failure_reason="out of stock")
    assert ending(failed) is Reason.OUT_OF_STOCK
    # Still PENDING: a step got no answer, or was refused, or the lease was lost first.
    compensating = replace(_order(Step.RELEASE), failure_reason="payment declined: no")
    assert ending(compensating, stuck_on=Outcome.UNKNOWN) is Reason.DEPENDENCY_UNAVAILABLE
    assert ending(compensating, stuck_on=Outcome.REJECTED) is Reason.DEPENDENCY_REJECTED
    assert ending(_order(Step.COMMIT)) is Reason.LEASE_LOST
