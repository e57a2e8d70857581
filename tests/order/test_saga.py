"""The saga over fake ports, and end to end through CreateOrder against real servers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest

from mesh.order.v1 import order_pb2
from mesh.payment.v1 import payment_pb2
from meshkit.errors import FieldViolation
from meshkit.redis_client import connect
from meshkit.sqlite import Database
from meshkit.testing import field_violations, free_port, wait_until
from order_service.domain import Line, Money, Reason, Status, Step, new_order, validate_create
from order_service.domain import Order as SagaOrder
from order_service.leases import Leases
from order_service.ports import Payment, RemoteError, Reservation
from order_service.saga import Saga
from order_service.store import MIGRATIONS, SCHEMA, OrderStore

from .conftest import (
    SEED_STOCK,
    Inventory,
    Order,
    Payments,
    StartOrder,
    StartPayments,
    counted_since,
    outcome_counts,
)

PENDING = order_pb2.ORDER_STATUS_PENDING
CONFIRMED = order_pb2.ORDER_STATUS_CONFIRMED
FAILED = order_pb2.ORDER_STATUS_FAILED


class SavingStore:
    def __init__(self) -> None:
        self.saved: list[SagaOrder] = []

        self.deleted: list[str] = []

    def save(self, order: SagaOrder, *, fence: int) -> SagaOrder:
        self.saved.append(order)
        return order

    def delete(self, order_id: str, *, fence: int) -> None:
        self.deleted.append(order_id)


class WillingInventory:
    def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        return Reservation(reservation_id="res_1", state="RESERVED", total=Money("USD", 100))

    def commit(self, reservation_id: str) -> Reservation:
        return Reservation(reservation_id=reservation_id, state="COMMITTED", total=None)

    def release(self, reservation_id: str) -> Reservation:
        return Reservation(reservation_id=reservation_id, state="RELEASED", total=None)


class RefusingInventory(WillingInventory):
    def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        raise RemoteError(
            "INVALID_ARGUMENT",
            "lines[0].sku: unknown SKU",
            (FieldViolation("lines[0].sku", "unknown SKU"),),
            definite=True,
        )


class WillingPayments:
    def charge(self, *, order_id: str, customer_id: str, amount: Money, request_id: str) -> Payment:
        return Payment(payment_id="pay_1", state="CAPTURED")

    def void_charge(self, *, charge_request_id: str, order_id: str) -> Payment:
        return Payment(payment_id="pay_1", state="VOIDED")

    def refund(self, *, payment_id: str, request_id: str) -> Payment:
        return Payment(payment_id=payment_id, state="REFUNDED")


class HeldLease:
    fence = 1

    def keep(self) -> bool:
        return True


def test_refused_lines_fail_the_order_or_discard_it_for_its_own_request() -> None:
    order = new_order("ord_" + "0" * 32, validate_create("c", [("SKU-0001", 1)], "r"))
    violation = FieldViolation("lines[0].sku", "unknown SKU")

    kept = SavingStore()
    run = Saga(kept, RefusingInventory(), WillingPayments()).run(order, HeldLease())
    assert (run.order.status, run.reason, run.invalid) == (
        Status.FAILED,
        Reason.INVALID,
        (violation,),
    )
    assert [o.failure_reason for o in kept.saved] == [
        "inventory refused the lines: lines[0].sku: unknown SKU"
    ]

    discarded = SavingStore()
    saga = Saga(discarded, RefusingInventory(), WillingPayments())
    run = saga.run(order, HeldLease(), creating=True)
    assert run.invalid == (violation,)
    assert (discarded.saved, discarded.deleted) == ([], [order.order_id])


def refused(method: str) -> RemoteError:
    """What the resilience library's refusal (here an open breaker) becomes at the port."""
    return RemoteError(
        "UNAVAILABLE", f"circuit breaker for payment{method} is open", definite=False, sent=False
    )


class BreakerOpenPayments(WillingPayments):
    def __init__(self) -> None:
        self.voids = 0

    def charge(self, *, order_id: str, customer_id: str, amount: Money, request_id: str) -> Payment:
        raise refused("/mesh.payment.v1.PaymentService/Charge")

    def void_charge(self, *, charge_request_id: str, order_id: str) -> Payment:
        self.voids += 1
        return super().void_charge(charge_request_id=charge_request_id, order_id=order_id)


class BreakerOpenInventory(WillingInventory):
    def __init__(self, *, commit: bool = False, reserve: bool = False) -> None:
        self.refuse_commit, self.refuse_reserve = commit, reserve
        self.releases = 0

    def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        if self.refuse_reserve:
            raise refused("/mesh.inventory.v1.InventoryService/Reserve")
        return super().reserve(order_id, lines)

    def commit(self, reservation_id: str) -> Reservation:
        if self.refuse_commit:
            raise refused("/mesh.inventory.v1.InventoryService/Commit")
        return super().commit(reservation_id)

    def release(self, reservation_id: str) -> Reservation:
        self.releases += 1
        return super().release(reservation_id)


def test_a_charge_never_sent_releases_the_stock_without_a_void() -> None:
    order = new_order("ord_" + "0" * 32, validate_create("c", [("SKU-0001", 1)], "r"))
    payments, inventory = BreakerOpenPayments(), BreakerOpenInventory()

    run = Saga(SavingStore(), inventory, payments).run(order, HeldLease(), creating=True)

    assert (run.order.status, run.reason) == (Status.FAILED, Reason.DEPENDENCY_UNAVAILABLE)
    assert run.order.failure_reason.startswith("payment unavailable: circuit breaker")
    assert (payments.voids, inventory.releases) == (0, 1)


def test_a_resumed_run_voids_a_charge_it_never_sent_as_an_earlier_run_may_have() -> None:
    # Recovery after a crash at CHARGE (unsaved: it resumes at RESERVE): the crashed run's
    # Charge may have captured, so a refused one here is unknown, and VoidCharge settles it.
    order = new_order("ord_" + "0" * 32, validate_create("c", [("SKU-0001", 1)], "r"))
    payments, inventory = BreakerOpenPayments(), BreakerOpenInventory()

    run = Saga(SavingStore(), inventory, payments).run(order, HeldLease())

    assert run.order.status is Status.FAILED
    assert (payments.voids, inventory.releases) == (1, 1)


def test_a_reserve_never_sent_fails_a_new_order_but_not_one_an_earlier_run_may_hold() -> None:
    order = new_order("ord_" + "0" * 32, validate_create("c", [("SKU-0001", 1)], "r"))
    inventory = BreakerOpenInventory(reserve=True)

    fresh = Saga(SavingStore(), inventory, WillingPayments()).run(order, HeldLease(), creating=True)
    assert (fresh.order.status, fresh.reason) == (Status.FAILED, Reason.DEPENDENCY_UNAVAILABLE)
    # Recovery resuming at RESERVE: a crashed run may have reserved, so find it and release it
    # (and that lookup, a Reserve, is refused too: the order waits at RELEASE).
    resumed = Saga(SavingStore(), inventory, WillingPayments()).run(order, HeldLease())
    assert (resumed.order.status, resumed.order.step) == (Status.PENDING, Step.RELEASE)


def test_a_commit_never_sent_waits_to_go_forward_instead_of_undoing_the_order() -> None:
    order = new_order("ord_" + "0" * 32, validate_create("c", [("SKU-0001", 1)], "r"))
    inventory = BreakerOpenInventory(commit=True)

    run = Saga(SavingStore(), inventory, WillingPayments()).run(order, HeldLease(), creating=True)

    assert (run.order.status, run.order.step) == (Status.PENDING, Step.COMMIT)
    assert inventory.releases == 0
    inventory.refuse_commit = False  # the breaker closes; recovery runs it again
    again = Saga(SavingStore(), inventory, WillingPayments()).run(run.order, HeldLease())
    assert again.order.status is Status.CONFIRMED


def test_the_happy_path_saves_before_commit_and_at_the_end_only() -> None:
    store = SavingStore()
    order = new_order("ord_" + "0" * 32, validate_create("c", [("SKU-0001", 1)], "r"))

    run = Saga(store, WillingInventory(), WillingPayments()).run(order, HeldLease())

    assert (run.order.status, run.reason) == (Status.CONFIRMED, Reason.NONE)
    # With the insert that is three writes: Reserve and Charge both rerun safely from RESERVE.
    assert [(o.step, o.status) for o in store.saved] == [
        (Step.COMMIT, Status.PENDING),
        (Step.DONE, Status.CONFIRMED),
    ]
    assert (store.saved[0].reservation_id, store.saved[0].payment_id) == ("res_1", "pay_1")
    assert store.saved[0].total == Money("USD", 100)


class CountingInventory(WillingInventory):
    """Counts the calls; ``during_reserve`` runs inside the Reserve call (a pause there)."""

    def __init__(self, during_reserve: Callable[[], None] = lambda: None) -> None:
        self.calls: list[str] = []
        self._during_reserve = during_reserve

    def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        self.calls.append("reserve")
        self._during_reserve()
        return super().reserve(order_id, lines)

    def commit(self, reservation_id: str) -> Reservation:
        self.calls.append("commit")
        return super().commit(reservation_id)

    def release(self, reservation_id: str) -> Reservation:
        self.calls.append("release")
        return super().release(reservation_id)


class CountingPayments(WillingPayments):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def charge(self, *, order_id: str, customer_id: str, amount: Money, request_id: str) -> Payment:
        self.calls.append("charge")
        return super().charge(
            order_id=order_id, customer_id=customer_id, amount=amount, request_id=request_id
        )

    def void_charge(self, *, charge_request_id: str, order_id: str) -> Payment:
        self.calls.append("void_charge")
        return super().void_charge(charge_request_id=charge_request_id, order_id=order_id)


def test_a_runner_whose_write_is_refused_for_its_old_token_stops_and_calls_nothing_more(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = OrderStore(Database(tmp_path / "order.db", SCHEMA, MIGRATIONS))
    # A frozen clock: the first runner's confirmation stays fresh, so keep() never asks
    # Redis and it goes on believing the lease is its own, as a paused process does.
    leases = Leases(connect(redis_url), lease_ms=1_000, monotonic=lambda: 100.0, keep_alive=False)
    order_id = "ord_" + "0" * 32
    first = leases.lease(order_id, customer_id="c")
    assert first.acquire()
    request = validate_create("c", [("SKU-0001", 1)], "r")
    order = store.insert(new_order(order_id, request), fence=first.fence)

    def taken_over() -> None:  # paused in Reserve past its lease; recovery takes the order
        leases.redis.delete(first.key)
        successor = leases.lease(order_id, customer_id="c")
        assert successor.acquire(after=order.fence)
        assert store.take(order_id, fence=successor.fence) is not None

    inventory, payments = CountingInventory(during_reserve=taken_over), CountingPayments()
    with caplog.at_level(logging.WARNING, logger="order_service.saga"):
        run = Saga(store, inventory, payments).run(order, first, creating=True)

    assert (run.order.status, run.reason) == (Status.PENDING, Reason.LEASE_LOST)
    # Charge is not saved before it runs (a rerun from RESERVE charges the same payment);
    # the first write after it, COMMIT's, is refused, and Commit is never called.
    assert (inventory.calls, payments.calls) == (["reserve"], ["charge"])
    stored = store.get(order_id)
    assert stored is not None
    assert (stored.step, stored.fence) == (Step.RESERVE, first.fence + 1)
    assert any(
        r.levelno == logging.WARNING and f"write with fence {first.fence} refused" in r.getMessage()
        for r in caplog.records
    )


def test_happy_path_confirms_with_stock_and_money_moved_once(
    order: Order, inventory: Inventory, payments: Payments
) -> None:
    placed = order.create("cust-1", ("SKU-0001", 2), ("SKU-0003", 1), request_id="happy-1")

    assert placed.status == CONFIRMED
    assert placed.failure_reason == ""
    assert placed.total.currency_code == "USD"
    assert placed.total.amount_minor == 2 * 2899 + 1299
    assert placed.reservation_id
    assert placed.payment_id
    assert placed.request_id == "happy-1"
    assert placed.create_time.ToMicroseconds() <= placed.update_time.ToMicroseconds()
    assert [(ln.sku, ln.quantity) for ln in placed.lines] == [("SKU-0001", 2), ("SKU-0003", 1)]
    assert inventory.available("SKU-0001") == SEED_STOCK - 2
    assert inventory.available("SKU-0003") == SEED_STOCK - 1
    assert payments.states(placed.order_id) == ["CAPTURED"]
    payment = payments.stub.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=placed.payment_id), timeout=5
    )
    assert payment.amount.amount_minor == placed.total.amount_minor
    assert order.get(placed.order_id) == placed


def test_declined_customer_fails_with_stock_back_and_no_money_moved(
    order: Order, inventory: Inventory, payments: Payments
) -> None:
    placed = order.create("decline-bob", ("SKU-0002", 3), request_id="decline-1")

    assert placed.status == FAILED
    assert placed.failure_reason.startswith("payment declined: ")
    assert placed.payment_id.startswith("pay_")  # the declined charge stays on the order's record
    assert inventory.available("SKU-0002") == SEED_STOCK
    assert payments.states(placed.order_id) == ["DECLINED"]


def test_payment_failing_compensates_with_void_and_release(
    start_order: StartOrder, inventory: Inventory, start_payments: StartPayments
) -> None:
    sick = start_payments(fault_rate=1.0)
    order = start_order(PAYMENT_TARGET=sick.target)

    placed = order.create("cust-1", ("SKU-0004", 1), request_id="sick-1")

    assert placed.status == FAILED
    assert placed.failure_reason == "payment unavailable: UNAVAILABLE"
    assert inventory.available("SKU-0004") == SEED_STOCK
    # VoidCharge left a tombstone: a late Charge with the saga's request_id captures nothing.
    assert sick.states(placed.order_id) == ["VOIDED"]
    assert placed.payment_id.startswith("pay_")  # linked, so GetPayment shows the void


def test_payment_rejecting_definitely_releases_without_a_void(
    start_order: StartOrder, inventory: Inventory, start_payments: StartPayments
) -> None:
    strict = start_payments(fault_rate=1.0, fault_code=grpc.StatusCode.FAILED_PRECONDITION)
    order = start_order(PAYMENT_TARGET=strict.target)

    placed = order.create("cust-1", ("SKU-0004", 1), request_id="strict-1")

    assert placed.status == FAILED
    assert placed.failure_reason.startswith("payment rejected: FAILED_PRECONDITION")
    assert inventory.available("SKU-0004") == SEED_STOCK
    assert strict.states(placed.order_id) == []


def test_payment_losing_data_is_not_definite_and_voids_before_releasing(
    start_order: StartOrder, inventory: Inventory, start_payments: StartPayments
) -> None:
    # DATA_LOSS is never retried, yet the charge may have been captured before the loss.
    lossy = start_payments(fault_rate=1.0, fault_code=grpc.StatusCode.DATA_LOSS)
    order = start_order(PAYMENT_TARGET=lossy.target)

    placed = order.create("cust-1", ("SKU-0004", 1), request_id="lossy-1")

    assert placed.status == FAILED
    assert placed.failure_reason == "payment unavailable: DATA_LOSS"
    assert inventory.available("SKU-0004") == SEED_STOCK
    assert lossy.states(placed.order_id) == ["VOIDED"]


def test_out_of_stock_fails_and_holds_nothing(
    order: Order, inventory: Inventory, payments: Payments
) -> None:
    placed = order.create(
        "cust-1", ("SKU-0005", 1), ("SKU-0006", SEED_STOCK + 1), request_id="oos-1"
    )

    assert placed.status == FAILED
    assert placed.failure_reason.startswith("out of stock: ")
    assert "SKU-0006" in placed.failure_reason
    assert not placed.failure_reason.startswith("out of stock: out of stock")
    assert inventory.available("SKU-0005") == SEED_STOCK
    assert payments.states(placed.order_id) == []


def test_unknown_sku_is_invalid_argument_and_leaves_nothing_behind(
    order: Order, inventory: Inventory
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        order.create("cust-1", ("SKU-0001", 1), ("SKU-9999", 1), request_id="unknown-1")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lines[1].sku" in field_violations(caught.value)
    listed = order.stub.ListOrders(order_pb2.ListOrdersRequest(), timeout=5)
    assert list(listed.orders) == []
    assert inventory.available("SKU-0001") == SEED_STOCK
    # The claim was withdrawn too: the request_id is free for a corrected order.
    fixed = order.create("cust-1", ("SKU-0001", 1), request_id="unknown-1")
    assert fixed.status == CONFIRMED


def test_unreachable_payment_leaves_the_order_compensating_for_recovery(
    start_order: StartOrder, inventory: Inventory, start_payments: StartPayments
) -> None:
    port = free_port()  # nothing listens here yet
    order = start_order(PAYMENT_TARGET=f"127.0.0.1:{port}", ORDER_CALL_TIMEOUT_MS="500")

    placed = order.create("cust-1", ("SKU-0007", 1), request_id="dark-1")

    # Charge's outcome is unknown and VoidCharge cannot reach payment either: the stock
    # stays held and the order PENDING until a compensation gets through.
    assert placed.status == PENDING
    assert inventory.available("SKU-0007") == SEED_STOCK - 1
    # A retry gets the same order at once (nobody is driving it), and starts no second saga.
    assert order.create("cust-1", ("SKU-0007", 1), request_id="dark-1") == placed

    payments = start_payments(port=port)
    # A restarted order service finishes it: its start-up pass, or the next ones (this process
    # shares grpc's subchannels, which may still be backing off from the refused connection).
    restarted = start_order(PAYMENT_TARGET=payments.target, ORDER_RECOVERY_INTERVAL_S="0.2")
    wait_until(
        lambda: restarted.get(placed.order_id).status != PENDING,
        timeout_s=10,
        what="recovery of the compensating order",
    )
    finished = restarted.get(placed.order_id)
    assert finished.status == FAILED
    assert finished.failure_reason.startswith("payment unavailable: ")
    assert inventory.available("SKU-0007") == SEED_STOCK
    assert payments.states(placed.order_id) == ["VOIDED"]


def test_every_order_is_counted_once_by_its_end_and_the_reason_class(
    order: Order, start_order: StartOrder, start_payments: StartPayments
) -> None:
    before = outcome_counts()

    order.create("cust-1", ("SKU-0008", 1), request_id="count-ok")
    order.create("decline-amy", ("SKU-0008", 1), request_id="count-declined")
    order.create("cust-1", ("SKU-0008", SEED_STOCK + 1), request_id="count-oos")
    with pytest.raises(grpc.RpcError):
        order.create("cust-1", ("SKU-9999", 1), request_id="count-invalid")
    # A duplicate answers the first's order and runs no saga: not counted again.
    order.create("cust-1", ("SKU-0008", 1), request_id="count-ok")
    sick = start_order(PAYMENT_TARGET=start_payments(fault_rate=1.0).target)
    sick.create("cust-1", ("SKU-0008", 1), request_id="count-sick")

    assert counted_since(before) == {
        ("CONFIRMED", "none"): 1,
        ("FAILED", "declined"): 1,
        ("FAILED", "out_of_stock"): 1,
        ("FAILED", "invalid"): 1,
        ("FAILED", "dependency_unavailable"): 1,
    }
