"""Recovery: orders a crashed process left PENDING at each step end CONFIRMED or FAILED.

Each test does for real what the crashed process had done (reservations and charges on the
real inventory and payment servers), inserts the order row as it was persisted, runs one
recovery pass and checks that stock and money moved exactly once, or not at all. The pass
itself (pages, workers, when the next one comes, stuck orders) is tested last, with a fake
saga and a fake clock over a real SQLite file and the real Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2
from mesh.payment.v1 import payment_pb2
from meshkit.ids import new_id
from meshkit.redis_client import connect
from meshkit.sqlite import Database
from meshkit.testing import free_port
from order_service.config import Settings
from order_service.domain import Money, Order, Reason, Status, Step, new_order, validate_create
from order_service.leases import Leases
from order_service.recovery import PAGE_SIZE, End, Recovery
from order_service.saga import Run
from order_service.server import OrderApp, build_app
from order_service.store import MIGRATIONS, SCHEMA, OrderStore
from order_service.stuck import RetryPolicy, StuckOrders

from .conftest import SEED_STOCK, Inventory, Payments, counted_since, outcome_counts

SKU = "SKU-0012"
QUANTITY = 2


def crashed(app: OrderApp, step: Step, *, customer_id: str = "cust-1", **fields: Any) -> Order:
    """Inserts an order row as a process that died before running ``step`` left it."""
    request = validate_create(customer_id, [(SKU, QUANTITY)], new_id("req"))
    return app.store.insert(
        replace(new_order(new_id("ord"), request), step=step, **fields), fence=1
    )


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
    assert app.recovery.run_once().finished == 1
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
        replace(order, step=Step.CHARGE, reservation_id=reservation_id, total=total), fence=1
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
        ),
        fence=1,
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
        ),
        fence=1,
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
        ),
        fence=1,
    )

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert inventory.available(SKU) == SEED_STOCK
    assert payments.states(order.order_id) == ["REFUNDED"]


def test_lines_inventory_rejects_end_failed(app: OrderApp, inventory: Inventory) -> None:
    request = validate_create("cust-1", [("SKU-9999", 1)], new_id("req"))
    order = app.store.insert(new_order(new_id("ord"), request), fence=1)
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
        assert dark.recovery.run_once().finished == 0
        assert counted_since(before) == {}
        # As it was, but for the token recovery's run stamped on it when it took it over.
        assert dark.store.get(order.order_id) == replace(order, fence=2)
    finally:
        dark.close()


def test_an_order_someone_holds_is_left_alone(app: OrderApp, inventory: Inventory) -> None:
    order = crashed(app, Step.RESERVE)
    holder = app.leases.lease(order.order_id, customer_id=order.customer_id)
    assert holder.acquire()

    assert app.recovery.run_once().finished == 0
    assert app.store.get(order.order_id) == order
    holder.release()
    assert recovered(app, order).status is Status.CONFIRMED


def test_only_orders_idle_for_the_age_are_resumed(app: OrderApp, inventory: Inventory) -> None:
    order = crashed(app, Step.RESERVE)
    patient = Recovery(app.store, app.leases, app.saga, app.stuck, interval_s=60, age_s=3600)

    assert patient.run_once().finished == 0
    assert app.store.get(order.order_id) == order
    patient.stop()


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
        ),
        fence=1,
    )

    done = recovered(app, order)

    assert done.status is Status.FAILED
    assert done.failure_reason == "inventory unavailable at commit"
    assert inventory.available(SKU) == SEED_STOCK
    assert payments.states(order.order_id) == ["REFUNDED"]


# --- the pass: pages, workers, the next pass, stuck orders ------------------------------------

INTERVAL_S = 5.0
AGE_S = 2.0
LEASE_MS = 3_000


class Clock:
    """The store's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now_us = 1_000_000_000_000

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1_000_000)


class FakeSaga:
    """Ends each order as ``decide`` says: CONFIRMED (True) or left where it is (False);
    the first ``workers`` runs of each round wait for one another, so a pass that ran fewer
    at once would hang and one that ran more would show it in ``peak``."""

    def __init__(
        self, store: OrderStore, decide: Callable[[Order], bool], *, together: int = 1
    ) -> None:
        self._store = store
        self._decide = decide
        self._together = threading.Barrier(together, timeout=10)
        self._lock = threading.Lock()
        self.running = self.peak = 0
        self.ran: list[str] = []

    def run(self, order: Order, lease: Any) -> Run:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.ran.append(order.order_id)
        try:
            self._together.wait()
            if self._decide(order):
                done = self._store.save(
                    replace(order, status=Status.CONFIRMED, step=Step.DONE), fence=lease.fence
                )
                return Run(done, Reason.NONE)
            return Run(order, Reason.DEPENDENCY_REJECTED)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> OrderStore:
    return OrderStore(Database(tmp_path / "recovery.db", SCHEMA, MIGRATIONS), clock=clock)


@pytest.fixture
def leases(redis_url: str) -> Iterator[Leases]:
    client = connect(redis_url)
    made = Leases(client, LEASE_MS, keep_alive=False)
    yield made
    client.close()


MakeRecovery = Callable[..., Recovery]


@pytest.fixture
def make_recovery(store: OrderStore, leases: Leases) -> Iterator[MakeRecovery]:
    made: list[Recovery] = []

    def make(saga: FakeSaga, *, attention_after: int = 3, **options: Any) -> Recovery:
        policy = RetryPolicy(
            first_retry_s=INTERVAL_S, max_retry_s=60, attention_after=attention_after
        )
        stuck = StuckOrders(store, policy)
        recovery = Recovery(
            store,
            leases,
            saga,
            stuck,
            interval_s=INTERVAL_S,
            age_s=AGE_S,
            **options,  # type: ignore[arg-type]
        )
        made.append(recovery)
        return recovery

    yield make
    for recovery in made:
        recovery.stop()


def backlog(store: OrderStore, count: int) -> list[Order]:
    return [
        store.insert(
            new_order(new_id("ord"), validate_create("c", [(SKU, 1)], new_id("req"))), fence=1
        )
        for _ in range(count)
    ]


def test_a_pass_drains_a_backlog_of_many_pages_four_orders_at_a_time(
    store: OrderStore, clock: Clock, make_recovery: MakeRecovery
) -> None:
    orders = backlog(store, 2 * PAGE_SIZE)
    clock.advance(AGE_S)
    saga = FakeSaga(store, lambda order: True, together=4)

    done = make_recovery(saga, workers=4).run_once()

    assert done.finished == 2 * PAGE_SIZE
    assert saga.peak == 4
    assert sorted(saga.ran) == sorted(o.order_id for o in orders)  # each once
    assert store.due(idle_since_us=clock(), retry_before_us=None, limit=1, after=None) == []
    assert done.wait_s == INTERVAL_S  # nothing left: the normal interval


def test_the_next_pass_comes_when_the_next_order_falls_due(
    store: OrderStore, clock: Clock, make_recovery: MakeRecovery
) -> None:
    recovery = make_recovery(FakeSaga(store, lambda order: True))
    assert recovery.run_once().wait_s == INTERVAL_S

    backlog(store, 1)  # in flight: due once it has been idle for AGE_S
    clock.advance(0.5)
    young = recovery.run_once()
    assert young.finished == 0
    assert young.wait_s == AGE_S - 0.5

    clock.advance(AGE_S)
    assert recovery.run_once().finished == 1


def test_an_order_whose_lease_is_held_is_looked_at_again_within_a_quarter_term(
    store: OrderStore, clock: Clock, leases: Leases, make_recovery: MakeRecovery
) -> None:
    (order,) = backlog(store, 1)
    clock.advance(AGE_S)
    dead_runner = leases.lease(order.order_id, customer_id=order.customer_id)
    assert dead_runner.acquire()
    recovery = make_recovery(FakeSaga(store, lambda order: True))

    held = recovery.run_once()
    assert held.ends[End.HELD] == 1
    assert held.wait_s == LEASE_MS / 4000

    leases.redis.delete(dead_runner.key)  # what its expiry does
    assert recovery.run_once().finished == 1


def test_a_stuck_order_is_retried_later_and_less_often_then_flagged_then_cleared(
    store: OrderStore, clock: Clock, make_recovery: MakeRecovery
) -> None:
    (order,) = backlog(store, 1)
    order = store.save(
        replace(order, step=Step.RELEASE, failure_reason="payment declined"), fence=1
    )
    clock.advance(AGE_S)
    fixed = threading.Event()
    saga = FakeSaga(store, lambda order: fixed.is_set())
    flagged: list[int] = []
    recovery = make_recovery(saga, attention_after=3, on_attention=flagged.append)

    delays = []
    for _ in range(3):
        one = recovery.run_once()
        assert one.ends[End.LEFT] == 1
        retry_time_us = store.stuck(order.order_id).retry_time_us
        delays.append(retry_time_us - clock())
        assert one.wait_s == min(INTERVAL_S, delays[-1] / 1_000_000)
        assert recovery.run_once().ends[End.LEFT] == 0  # not again before its retry time
        clock.now_us = retry_time_us
    assert delays[0] <= delays[1] <= delays[2]
    assert delays[2] >= 10_000_000  # the third wait: 10 to 20 s
    assert flagged[-1] == 1
    assert store.stuck(order.order_id).attention_reason.startswith("RELEASE has failed 3 runs")

    fixed.set()  # the dependency is back
    assert recovery.run_once().finished == 1
    assert flagged[-1] == 0
    assert store.stuck(order.order_id).runs == 0


def test_the_start_up_pass_takes_stuck_orders_whatever_their_retry_time(
    store: OrderStore, clock: Clock, make_recovery: MakeRecovery
) -> None:
    backlog(store, 1)
    clock.advance(AGE_S)
    saga = FakeSaga(store, lambda order: len(saga.ran) > 1)
    recovery = make_recovery(saga)
    assert recovery.run_once().ends[End.LEFT] == 1

    assert recovery.run_once().finished == 0
    assert recovery.run_once(ignore_retry_times=True).finished == 1
