"""Recovery: orders a crashed process left PENDING at each step end CONFIRMED or FAILED.

Each test does for real what the crashed process had done (reservations and charges on the
real inventory and payment servers), inserts the order row as it was persisted, runs one
recovery pass and checks that stock and money moved exactly once, or not at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2
from mesh.payment.v1 import payment_pb2
from meshkit.ids import new_id
from meshkit.testing import free_port
from order_service.config import Settings
from order_service.domain import Money, Order, Status, Step, new_order, validate_create
from order_service.recovery import Recovery
from order_service.server import OrderApp, build_app

from .conftest import SEED_STOCK, Inventory, Payments, counted_since, outcome_counts

SKU = "SKU-0012"
QUANTITY = 2


def crashed(app: OrderApp, step: Step, *, customer_id: str = "cust-1", **fields: Any) -> Order:
    """Inserts an order row as a process that died before running ``step`` left it."""
    request = validate_create(customer_id, [(SKU, QUANTITY)], new_id("req"))
    return app.store.insert(replace(new_order(new_id("ord"), request), step=step, **fields))


def reserve(inventory: Inventory, order: Order) -> tuple[str, Money]:
    reservation = inventory.reserve(order.order_id, (SKU, QUANTITY))
    return reservation.reservation_id, Money("USD", reservation.total.amount_minor)


def charge(payments: Payments, order: Order, total: Money) -> str:
    payment = payments.stub.Charge(
        payment_pb2.ChargeRequest(
            order_id=order.order_id,
            customer_id=order.customer_id,
            amount=money_pb2.Money(currency_code="USD", amount_minor=total.amount_minor),
            request_id=order.charge_request_id,
        ),
        timeout=5,
    )
    assert payment.state == payment_pb2.PAYMENT_STATE_CAPTURED
    return str(payment.payment_id)


def recovered(app: OrderApp, order: Order) -> Order:
    assert app.recovery.run_once() == 1
    found = app.store.get(order.order_id)
    assert found is not None
    return found


def test_reserve_done_but_not_saved_goes_forward_to_confirmed(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RESERVE)
    reservation_id, _ = reserve(inventory, order)

    done = recovered(app, order)

    assert done.status is Status.CONFIRMED
    assert done.reservation_id == reservation_id
    assert inventory.available(SKU) == SEED_STOCK - QUANTITY
    assert payments.states(order.order_id) == ["CAPTURED"]


def test_nothing_done_yet_runs_the_whole_saga(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RESERVE)

    assert recovered(app, order).status is Status.CONFIRMED
    assert inventory.available(SKU) == SEED_STOCK - QUANTITY
    assert payments.states(order.order_id) == ["CAPTURED"]


def test_charge_done_but_not_saved_is_not_charged_twice(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RESERVE)
    reservation_id, total = reserve(inventory, order)
    order = app.store.save(
        replace(order, step=Step.CHARGE, reservation_id=reservation_id, total=total)
    )
    payment_id = charge(payments, order, total)

    done = recovered(app, order)

    assert done.status is Status.CONFIRMED
    assert done.payment_id == payment_id
    assert done.total == total
    assert inventory.available(SKU) == SEED_STOCK - QUANTITY
    assert payments.states(order.order_id) == ["CAPTURED"]


def test_reserve_and_charge_done_with_the_row_still_at_reserve_charge_once(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    # The saga saves no CHARGE position: a crash after Charge leaves the row at RESERVE.
    order = crashed(app, Step.RESERVE)
    reservation_id, total = reserve(inventory, order)
    payment_id = charge(payments, order, total)

    done = recovered(app, order)

    assert done.status is Status.CONFIRMED
    assert (done.reservation_id, done.payment_id, done.total) == (reservation_id, payment_id, total)
    assert inventory.available(SKU) == SEED_STOCK - QUANTITY
    assert payments.states(order.order_id) == ["CAPTURED"]


def test_left_at_commit_confirms(app: OrderApp, inventory: Inventory, payments: Payments) -> None:
    order = crashed(app, Step.RESERVE)
    reservation_id, total = reserve(inventory, order)
    payment_id = charge(payments, order, total)
    order = app.store.save(
        replace(
            order,
            step=Step.COMMIT,
            reservation_id=reservation_id,
            total=total,
            payment_id=payment_id,
        )
    )

    assert recovered(app, order).status is Status.CONFIRMED
    assert inventory.available(SKU) == SEED_STOCK - QUANTITY
    assert payments.states(order.order_id) == ["CAPTURED"]


def test_void_charge_refunds_a_charge_that_did_happen_and_releases(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RESERVE)
    reservation_id, total = reserve(inventory, order)
    charge(payments, order, total)  # the "unknown" outcome was in fact a capture
    order = app.store.save(
        replace(
            order,
            step=Step.VOID_CHARGE,
            reservation_id=reservation_id,
            total=total,
            failure_reason="payment unavailable: DEADLINE_EXCEEDED",
        )
    )

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert done.failure_reason == "payment unavailable: DEADLINE_EXCEEDED"
    assert inventory.available(SKU) == SEED_STOCK
    assert payments.states(order.order_id) == ["REFUNDED"]


def test_release_finds_a_reservation_whose_id_was_never_saved(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RELEASE, failure_reason="inventory unavailable: DEADLINE_EXCEEDED")
    reservation_id, _ = reserve(inventory, order)  # the Reserve whose answer was lost

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert done.reservation_id == reservation_id
    assert inventory.available(SKU) == SEED_STOCK
    assert payments.states(order.order_id) == []


def test_refund_after_a_failed_commit_gives_the_money_back(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RESERVE)
    reservation_id, total = reserve(inventory, order)
    payment_id = charge(payments, order, total)
    inventory.stub.Release(
        inventory_pb2.ReleaseRequest(reservation_id=reservation_id),
        timeout=5,
    )
    order = app.store.save(
        replace(
            order,
            step=Step.REFUND,
            reservation_id=reservation_id,
            total=total,
            payment_id=payment_id,
            failure_reason="inventory unavailable at commit",
        )
    )

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert inventory.available(SKU) == SEED_STOCK
    assert payments.states(order.order_id) == ["REFUNDED"]


def test_lines_inventory_rejects_end_failed(app: OrderApp, inventory: Inventory) -> None:
    request = validate_create("cust-1", [("SKU-9999", 1)], new_id("req"))
    order = app.store.insert(new_order(new_id("ord"), request))
    before = outcome_counts()

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert done.failure_reason.startswith("inventory refused the lines: ")
    assert counted_since(before) == {("FAILED", "invalid"): 1}


def test_an_order_recovery_cannot_finish_is_not_counted_again(
    order_env: dict[str, str], inventory: Inventory
) -> None:
    # Its request counted it PENDING; each pass that leaves it so would count it again.
    dark = build_app(Settings.from_env({**order_env, "PAYMENT_TARGET": f"127.0.0.1:{free_port()}"}))
    try:
        order = crashed(dark, Step.VOID_CHARGE, failure_reason="payment unavailable: UNAVAILABLE")
        before = outcome_counts()
        assert dark.recovery.run_once() == 0
        assert counted_since(before) == {}
        assert dark.store.get(order.order_id) == order
    finally:
        dark.close()


def test_an_order_someone_holds_is_left_alone(app: OrderApp, inventory: Inventory) -> None:
    order = crashed(app, Step.RESERVE)
    holder = app.leases.lease(order.order_id)
    assert holder.acquire()

    assert app.recovery.run_once() == 0
    assert app.store.get(order.order_id) == order
    holder.release()
    assert recovered(app, order).status is Status.CONFIRMED


def test_only_orders_idle_for_the_age_are_resumed(app: OrderApp, inventory: Inventory) -> None:
    order = crashed(app, Step.RESERVE)
    patient = Recovery(app.store, app.leases, app.saga, interval_s=60, age_s=3600)

    assert patient.run_once() == 0
    assert app.store.get(order.order_id) == order


def test_commit_refused_releases_and_refunds(
    app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order = crashed(app, Step.RESERVE)
    reservation_id, total = reserve(inventory, order)
    payment_id = charge(payments, order, total)
    # The stock went back before the commit (Commit now answers FAILED_PRECONDITION).
    inventory.stub.Release(inventory_pb2.ReleaseRequest(reservation_id=reservation_id), timeout=5)
    order = app.store.save(
        replace(
            order,
            step=Step.COMMIT,
            reservation_id=reservation_id,
            total=total,
            payment_id=payment_id,
        )
    )

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert done.failure_reason == "inventory unavailable at commit"
    assert inventory.available(SKU) == SEED_STOCK
    assert payments.states(order.order_id) == ["REFUNDED"]
