"""CreateOrder's AIP-155 request_id semantics, validation of every RPC, GetOrder and ListOrders."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from mesh.order.v1 import order_pb2
from meshkit.ids import new_id
from order_service.domain import validate_create
from order_service.server import OrderApp
from order_service.store import Claim

from .conftest import SEED_STOCK, Inventory, Order, Payments, proto_lines, violations

CONFIRMED = order_pb2.ORDER_STATUS_CONFIRMED


def test_sequential_duplicates_return_the_same_order_without_a_second_charge(
    order: Order, inventory: Inventory, payments: Payments
) -> None:
    first = order.create("cust-1", ("SKU-0001", 1), ("SKU-0002", 2), request_id="dup-1")
    # The same payload with its lines in another order is the same request.
    again = order.create("cust-1", ("SKU-0002", 2), ("SKU-0001", 1), request_id="dup-1")

    assert again == first
    assert first.status == CONFIRMED
    assert inventory.available("SKU-0001") == SEED_STOCK - 1
    assert payments.states(first.order_id) == ["CAPTURED"]


def test_concurrent_duplicates_run_one_saga_and_charge_once(
    order: Order, inventory: Inventory, payments: Payments
) -> None:
    callers = 8
    start = threading.Barrier(callers)

    def create(_: int) -> order_pb2.Order:
        start.wait()
        return order.create("cust-1", ("SKU-0003", 2), request_id="race-1")

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(create, range(callers)))

    assert {r.order_id for r in results} == {results[0].order_id}
    assert {r.status for r in results} == {CONFIRMED}
    assert inventory.available("SKU-0003") == SEED_STOCK - 2
    assert payments.states(results[0].order_id) == ["CAPTURED"]
    listed = order.stub.ListOrders(order_pb2.ListOrdersRequest(), timeout=5)
    assert [o.order_id for o in listed.orders] == [results[0].order_id]


def test_concurrent_duplicates_of_an_invalid_order_all_get_invalid_argument(
    order: Order,
) -> None:
    callers = 4
    start = threading.Barrier(callers)

    def create(_: int) -> grpc.StatusCode:
        start.wait()
        try:
            order.create("cust-1", ("SKU-9998", 1), request_id="race-bad")
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(callers) as pool:
        codes = set(pool.map(create, range(callers)))

    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    listed = order.stub.ListOrders(order_pb2.ListOrdersRequest(), timeout=5)
    assert list(listed.orders) == []


def test_same_request_id_with_another_payload_is_already_exists(order: Order) -> None:
    first = order.create("cust-1", ("SKU-0001", 1), request_id="reuse-1")

    for customer, lines in [("cust-1", [("SKU-0001", 2)]), ("cust-2", [("SKU-0001", 1)])]:
        with pytest.raises(grpc.RpcError) as caught:
            order.create(customer, *lines, request_id="reuse-1")
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "request_id 'reuse-1'" in caught.value.details()
        assert first.order_id in caught.value.details()


def test_create_order_names_every_bad_field(order: Order) -> None:
    request = order_pb2.CreateOrderRequest(
        customer_id="",
        lines=proto_lines(("SKU-0001", 0), ("bad sku", 1), ("SKU-0001", 1)),
        request_id="has spaces",
    )
    with pytest.raises(grpc.RpcError) as caught:
        order.stub.CreateOrder(request, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {
        "customer_id",
        "request_id",
        "lines[0].quantity",
        "lines[1].sku",
        "lines[2].sku",
    }


def test_create_order_without_lines_is_invalid(order: Order) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        order.create("cust-1", request_id="empty-1")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"lines"}


@pytest.mark.parametrize("order_id", ["", "ord_xyz", "pay_" + "0" * 32, "ord_" + "A" * 32])
def test_get_order_with_a_malformed_id_is_invalid(order: Order, order_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        order.get(order_id)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"order_id"}


def test_get_order_unknown_is_not_found(order: Order) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        order.get(new_id("ord"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_orders_is_newest_first_filtered_and_paged(order: Order) -> None:
    placed = [
        order.create(f"cust-{i % 2}", ("SKU-0010", 1), request_id=f"list-{i}") for i in range(5)
    ]
    newest_first = [o.order_id for o in placed[::-1]]

    everything = order.stub.ListOrders(order_pb2.ListOrdersRequest(), timeout=5)
    assert [o.order_id for o in everything.orders] == newest_first
    assert everything.next_page_token == ""

    seen: list[str] = []
    token = ""
    while True:
        page = order.stub.ListOrders(
            order_pb2.ListOrdersRequest(customer_id="cust-0", page_size=2, page_token=token),
            timeout=5,
        )
        seen += [o.order_id for o in page.orders]
        assert all(o.customer_id == "cust-0" for o in page.orders)
        token = page.next_page_token
        if not token:
            break
    assert seen == [placed[4].order_id, placed[2].order_id, placed[0].order_id]


def test_list_orders_names_every_bad_field(order: Order) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        order.stub.ListOrders(
            order_pb2.ListOrdersRequest(customer_id="no spaces!", page_size=101, page_token="%%"),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"customer_id", "page_size", "page_token"}


def test_a_page_token_is_bound_to_its_filter(order: Order) -> None:
    for i in range(3):
        order.create("cust-0", ("SKU-0011", 1), request_id=f"bound-{i}")
    page = order.stub.ListOrders(
        order_pb2.ListOrdersRequest(customer_id="cust-0", page_size=1), timeout=5
    )
    with pytest.raises(grpc.RpcError) as caught:
        order.stub.ListOrders(
            order_pb2.ListOrdersRequest(page_token=page.next_page_token), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(caught.value)) == {"page_token"}


def test_a_claim_whose_runner_died_before_inserting_is_taken_over(
    order: Order, app: OrderApp, payments: Payments
) -> None:
    request = validate_create("cust-1", [("SKU-0015", 1)], "orphan-1")
    orphan = Claim(new_id("ord"), request.fingerprint)
    assert app.claims.claim("orphan-1", orphan) is None  # then the process died

    placed = order.create("cust-1", ("SKU-0015", 1), request_id="orphan-1")

    assert placed.order_id == orphan.order_id
    assert placed.status == CONFIRMED
    assert payments.states(placed.order_id) == ["CAPTURED"]


def test_redis_losing_its_claims_does_not_start_a_second_saga(
    order: Order, redis_url: str, payments: Payments
) -> None:
    first = order.create("cust-1", ("SKU-0016", 1), request_id="amnesia-1")
    redis.Redis.from_url(redis_url).flushall()

    assert order.create("cust-1", ("SKU-0016", 1), request_id="amnesia-1") == first
    assert payments.states(first.order_id) == ["CAPTURED"]
