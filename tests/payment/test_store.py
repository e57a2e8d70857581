"""The shared table: two deployments' stores on one file, racing on the same request_id."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshkit.ids import new_id
from payment_service.domain import ChargeRequest, Money, PaymentState
from payment_service.store import PaymentStore

from .conftest import row_count


def test_concurrent_duplicates_from_two_deployments_make_one_row(tmp_path: Path) -> None:
    stores = [PaymentStore(tmp_path / "payment.db", version=v) for v in ("v1", "v2")]
    request = ChargeRequest(
        order_id=new_id("ord"),
        customer_id="cust-1",
        amount=Money("EUR", 500),
        request_id="race-1",
    )
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: stores[i % 2].charge(request), range(64)))
    assert len({p.payment_id for p in results}) == 1
    assert results[0].state is PaymentState.CAPTURED
    assert row_count(tmp_path, "request_id = ?", "race-1") == 1


def test_concurrent_void_and_charge_never_capture_twice(tmp_path: Path) -> None:
    """Whatever wins the race, the charge ends with no money kept: REFUNDED or VOIDED."""
    store = PaymentStore(tmp_path / "payment.db", version="v1")
    order_id = new_id("ord")
    request = ChargeRequest(
        order_id=order_id, customer_id="cust-1", amount=Money("USD", 100), request_id="late-1"
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        charges = [pool.submit(store.charge, request) for _ in range(8)]
        void = pool.submit(store.void, "late-1", order_id)
        void.result()
        [c.result() for c in charges]
    final = store.void("late-1", order_id)
    assert final.state in (PaymentState.REFUNDED, PaymentState.VOIDED)
    assert row_count(tmp_path, "request_id = ?", "late-1") == 1
