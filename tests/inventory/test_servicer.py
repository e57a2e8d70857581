"""Every RPC over a real channel to a real server: validation, errors, idempotency, races."""

from __future__ import annotations

import base64
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from inventory.helpers import (
    Inventory,
    StartInventory,
    bad_request_fields,
    order_id,
    reserve_request,
    rpc_error,
)
from inventory_service.domain import CATALOG
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshkit.errors import trailer_bytes
from meshkit.ids import new_id
from meshkit.limits import ERROR_TRAILER_BUDGET_BYTES, MAX_FIELD_VIOLATIONS

Stub = inventory_pb2_grpc.InventoryServiceStub


def _assert_invalid(error: grpc.RpcError, *fields: str) -> None:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert bad_request_fields(error) == list(fields)
    for field in fields:
        assert f"{field}: " in error.details()


# --- GetItem ----------------------------------------------------------------------------------


def test_get_item(stub: Stub) -> None:
    item = stub.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0001"), timeout=5)
    assert (item.sku, item.name, item.available) == ("SKU-0001", CATALOG[0].name, 100)
    assert (item.price.currency_code, item.price.amount_minor) == ("USD", CATALOG[0].price_minor)


@pytest.mark.parametrize("sku", ["", "sku-0001", "SKU 1", "X" * 33])
def test_get_item_malformed_sku(stub: Stub, sku: str) -> None:
    _assert_invalid(rpc_error(stub.GetItem, inventory_pb2.GetItemRequest(sku=sku)), "sku")


def test_get_item_unknown_sku_is_not_found(stub: Stub) -> None:
    error = rpc_error(stub.GetItem, inventory_pb2.GetItemRequest(sku="SKU-9999"))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "SKU-9999" in error.details()


# --- ListItems --------------------------------------------------------------------------------


def test_list_items_pages_through_the_catalog_in_sku_order(stub: Stub) -> None:
    skus: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = stub.ListItems(inventory_pb2.ListItemsRequest(page_size=10, page_token=token))
        skus += [item.sku for item in page.items]
        sizes.append(len(page.items))
        token = page.next_page_token
        if not token:
            break
    assert skus == [entry.sku for entry in CATALOG]
    assert sizes == [10, 10, len(CATALOG) - 20]


def test_list_items_default_page_size_is_20(stub: Stub) -> None:
    page = stub.ListItems(inventory_pb2.ListItemsRequest(), timeout=5)
    assert len(page.items) == 20
    assert page.next_page_token


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (inventory_pb2.ListItemsRequest(page_size=-1), "page_size"),
        (inventory_pb2.ListItemsRequest(page_size=101), "page_size"),
        (inventory_pb2.ListItemsRequest(page_token="garbage!"), "page_token"),
    ],
)
def test_list_items_invalid(
    stub: Stub, request_: inventory_pb2.ListItemsRequest, field: str
) -> None:
    _assert_invalid(rpc_error(stub.ListItems, request_), field)


# --- Reserve ----------------------------------------------------------------------------------


def test_reserve_holds_stock_and_prices_the_lines(inventory: Inventory) -> None:
    oid = order_id()
    reservation = inventory.reserve(oid, ("SKU-0001", 2), ("SKU-0003", 1))
    assert reservation.reservation_id.startswith("res_")
    assert reservation.order_id == oid
    assert reservation.state == inventory_pb2.RESERVATION_STATE_RESERVED
    assert [
        (line.sku, line.quantity, line.unit_price.amount_minor) for line in reservation.lines
    ] == [
        ("SKU-0001", 2, CATALOG[0].price_minor),
        ("SKU-0003", 1, CATALOG[2].price_minor),
    ]
    assert reservation.total.currency_code == "USD"
    assert reservation.total.amount_minor == 2 * CATALOG[0].price_minor + CATALOG[2].price_minor
    assert (inventory.available("SKU-0001"), inventory.available("SKU-0003")) == (98, 99)


GOOD_ORDER = new_id("ord")


@pytest.mark.parametrize(
    ("order", "lines", "fields"),
    [
        ("", [("SKU-0001", 1)], ["order_id"]),
        ("ord_nothex", [("SKU-0001", 1)], ["order_id"]),
        (GOOD_ORDER, [], ["lines"]),
        (GOOD_ORDER, [(f"SKU-{i:04d}", 1) for i in range(1, 52)], ["lines"]),
        (GOOD_ORDER, [("SKU-0001", 0)], ["lines[0].quantity"]),
        (GOOD_ORDER, [("SKU-0001", -3)], ["lines[0].quantity"]),
        (GOOD_ORDER, [("SKU-0001", 1001)], ["lines[0].quantity"]),
        (GOOD_ORDER, [("SKU-0001", 1), ("bad sku", 1)], ["lines[1].sku"]),
        (GOOD_ORDER, [("SKU-0001", 1), ("SKU-0001", 1)], ["lines[1].sku"]),
        (GOOD_ORDER, [("SKU-0001", 1), ("SKU-9999", 1)], ["lines[1].sku"]),
    ],
)
def test_reserve_invalid(
    inventory: Inventory, order: str, lines: list[tuple[str, int]], fields: list[str]
) -> None:
    _assert_invalid(rpc_error(inventory.stub.Reserve, reserve_request(order, *lines)), *fields)
    assert inventory.available("SKU-0001") == 100, "a rejected request holds nothing"


def test_reserve_is_idempotent_by_order_id(inventory: Inventory) -> None:
    oid = order_id()
    first = inventory.reserve(oid, ("SKU-0001", 2), ("SKU-0002", 1))
    again = inventory.reserve(oid, ("SKU-0002", 1), ("SKU-0001", 2))  # line order is irrelevant
    assert again == first
    assert inventory.available("SKU-0001") == 98, "stock moved once"


def test_reserve_same_order_id_with_different_lines_is_already_exists(
    inventory: Inventory,
) -> None:
    oid = order_id()
    inventory.reserve(oid, ("SKU-0001", 2))
    error = rpc_error(inventory.stub.Reserve, reserve_request(oid, ("SKU-0001", 3)))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert oid in error.details()
    assert inventory.available("SKU-0001") == 98


def test_reserve_is_all_or_nothing(inventory: Inventory) -> None:
    error = rpc_error(
        inventory.stub.Reserve, reserve_request(order_id(), ("SKU-0001", 5), ("SKU-0002", 101))
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "out of stock: SKU-0002 (requested 101, available 100)"
    assert (inventory.available("SKU-0001"), inventory.available("SKU-0002")) == (100, 100)


def test_a_refusal_for_stock_is_final_for_its_order(inventory: Inventory) -> None:
    """A late duplicate of a refused Reserve (its order already failed) takes nothing, even once
    stock would suffice: otherwise that stock would be held by an order nobody will release."""
    holder = inventory.reserve(order_id(), ("SKU-0003", 60))
    refused_order = order_id()
    first = rpc_error(inventory.stub.Reserve, reserve_request(refused_order, ("SKU-0003", 50)))
    assert first.code() is grpc.StatusCode.FAILED_PRECONDITION
    inventory.stub.Release(inventory_pb2.ReleaseRequest(reservation_id=holder.reservation_id))
    assert inventory.available("SKU-0003") == 100

    late = rpc_error(inventory.stub.Reserve, reserve_request(refused_order, ("SKU-0003", 50)))
    assert late.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert late.details() == first.details()
    assert inventory.available("SKU-0003") == 100
    other_lines = rpc_error(inventory.stub.Reserve, reserve_request(refused_order, ("SKU-0003", 1)))
    assert other_lines.code() is grpc.StatusCode.ALREADY_EXISTS


def test_concurrent_reserves_never_oversell(start_inventory: StartInventory) -> None:
    inventory = start_inventory(seed_stock=10)

    def reserve_one(_: int) -> grpc.StatusCode:
        try:
            inventory.reserve(order_id(), ("SKU-0005", 1))
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(reserve_one, range(50)))
    assert codes.count(grpc.StatusCode.OK) == 10
    assert codes.count(grpc.StatusCode.FAILED_PRECONDITION) == 40
    assert inventory.available("SKU-0005") == 0
    with sqlite3.connect(inventory.settings.db_path) as conn:
        (held,) = conn.execute(
            "SELECT SUM(quantity) FROM reservation_lines WHERE sku = 'SKU-0005'"
        ).fetchone()
        (available,) = conn.execute("SELECT available FROM items WHERE sku = 'SKU-0005'").fetchone()
    assert (held, available) == (10, 0)


def test_concurrent_duplicates_of_one_order_reserve_once(inventory: Inventory) -> None:
    oid = order_id()
    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = set(
            pool.map(lambda _: inventory.reserve(oid, ("SKU-0004", 3)).reservation_id, range(20))
        )
    assert len(ids) == 1
    assert inventory.available("SKU-0004") == 97


# --- Commit / Release -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Commit", "Release"])
@pytest.mark.parametrize("reservation_id", ["", "res_123", new_id("ord")])
def test_commit_and_release_invalid_id(stub: Stub, method: str, reservation_id: str) -> None:
    request_type = getattr(inventory_pb2, f"{method}Request")
    error = rpc_error(getattr(stub, method), request_type(reservation_id=reservation_id))
    _assert_invalid(error, "reservation_id")


@pytest.mark.parametrize("method", ["Commit", "Release"])
def test_commit_and_release_unknown_id_is_not_found(stub: Stub, method: str) -> None:
    request_type = getattr(inventory_pb2, f"{method}Request")
    missing = new_id("res")
    error = rpc_error(getattr(stub, method), request_type(reservation_id=missing))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert missing in error.details()


def test_commit_is_idempotent_and_blocks_release(inventory: Inventory) -> None:
    rid = inventory.reserve(order_id(), ("SKU-0001", 4)).reservation_id
    for _ in range(2):
        committed = inventory.stub.Commit(inventory_pb2.CommitRequest(reservation_id=rid))
        assert committed.state == inventory_pb2.RESERVATION_STATE_COMMITTED
        assert committed.total.amount_minor == 4 * CATALOG[0].price_minor
    error = rpc_error(inventory.stub.Release, inventory_pb2.ReleaseRequest(reservation_id=rid))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already committed" in error.details()
    assert inventory.available("SKU-0001") == 96, "sold stock stays sold"


def test_release_is_idempotent_returns_stock_once_and_blocks_commit(inventory: Inventory) -> None:
    oid = order_id()
    rid = inventory.reserve(oid, ("SKU-0001", 4), ("SKU-0002", 1)).reservation_id
    for _ in range(2):
        released = inventory.stub.Release(inventory_pb2.ReleaseRequest(reservation_id=rid))
        assert released.state == inventory_pb2.RESERVATION_STATE_RELEASED
    assert (inventory.available("SKU-0001"), inventory.available("SKU-0002")) == (100, 100)
    error = rpc_error(inventory.stub.Commit, inventory_pb2.CommitRequest(reservation_id=rid))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    again = inventory.reserve(oid, ("SKU-0001", 4), ("SKU-0002", 1))
    assert (again.reservation_id, again.state) == (rid, inventory_pb2.RESERVATION_STATE_RELEASED)
    assert inventory.available("SKU-0001") == 100, "re-reserving a released order holds nothing"


# --- cache ------------------------------------------------------------------------------------


def test_get_item_is_cached_in_redis_and_invalidated_by_reserve_and_release(
    inventory: Inventory,
) -> None:
    assert inventory.available("SKU-0007") == 100
    client = redis.Redis.from_url(inventory.settings.redis_url)
    assert client.exists("inventory:cache:{item:SKU-0007}:entry"), "the read left a cache entry"
    with sqlite3.connect(inventory.settings.db_path) as conn:
        conn.execute("UPDATE items SET available = 90 WHERE sku = 'SKU-0007'")
    assert inventory.available("SKU-0007") == 100, "served from the cache"

    rid = inventory.reserve(order_id(), ("SKU-0007", 5)).reservation_id
    assert inventory.available("SKU-0007") == 85, "reserve invalidated the cache"
    inventory.stub.Release(inventory_pb2.ReleaseRequest(reservation_id=rid))
    assert inventory.available("SKU-0007") == 90, "release invalidated the cache"
    page = inventory.stub.ListItems(inventory_pb2.ListItemsRequest(page_size=100))
    assert {item.sku: item.available for item in page.items}["SKU-0007"] == 90
    client.close()


# --- hostile input: INVALID_ARGUMENT naming a field, small trailers, no traceback -------------


def _assert_small(error: grpc.RpcError) -> None:
    details_bin = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert trailer_bytes(error.details() or "", details_bin) <= ERROR_TRAILER_BUDGET_BYTES


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [record.getMessage() for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("sku", ["A" * 4000, "A" * 20_000, "SKU-0001\n", "\u202eSKU"])
def test_get_item_refuses_a_hostile_sku_in_small_trailers(
    stub: Stub, sku: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = rpc_error(stub.GetItem, inventory_pb2.GetItemRequest(sku=sku))
    _assert_invalid(error, "sku")
    _assert_small(error)
    _no_tracebacks(caplog)


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 2000).decode(),
        base64.urlsafe_b64encode(b'{"c":{"after":"SKU-0001"},"f":"nope"}').decode(),
        "A" * 100_000,
    ],
)
def test_list_items_refuses_a_crafted_token(
    stub: Stub, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    _assert_invalid(
        rpc_error(stub.ListItems, inventory_pb2.ListItemsRequest(page_token=token)), "page_token"
    )
    _no_tracebacks(caplog)


@pytest.mark.parametrize("page_size", [-(2**31), 2**31 - 1])
def test_list_items_refuses_an_extreme_page_size(stub: Stub, page_size: int) -> None:
    error = rpc_error(stub.ListItems, inventory_pb2.ListItemsRequest(page_size=page_size))
    _assert_invalid(error, "page_size")


def test_reserve_refuses_ten_thousand_bad_lines_in_small_trailers(
    inventory: Inventory, caplog: pytest.LogCaptureFixture
) -> None:
    request = reserve_request(order_id(), *[("bad", 0)] * 10_000)
    error = rpc_error(inventory.stub.Reserve, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_request_fields(error)
    assert fields[0] == "lines"
    assert len(fields) == MAX_FIELD_VIOLATIONS + 1
    assert fields[-1] == "request"
    _assert_small(error)
    _no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("order", "field"), [(new_id("ord") + "\n", "order_id"), ("o" * 100_000, "order_id")]
)
def test_reserve_refuses_a_hostile_order_id(inventory: Inventory, order: str, field: str) -> None:
    _assert_invalid(
        rpc_error(inventory.stub.Reserve, reserve_request(order, ("SKU-0001", 1))), field
    )


@pytest.mark.parametrize("method", ["Commit", "Release"])
@pytest.mark.parametrize("reservation_id", [new_id("res") + "\n", "res_" + "f" * 50_000])
def test_commit_and_release_refuse_a_hostile_id(
    stub: Stub, method: str, reservation_id: str
) -> None:
    request_type = getattr(inventory_pb2, f"{method}Request")
    error = rpc_error(getattr(stub, method), request_type(reservation_id=reservation_id))
    _assert_invalid(error, "reservation_id")
    _assert_small(error)


# A truncated field, a tag that is not one, and a string field holding bytes that are not UTF-8
# (field 1 is a string in every request but ListItemsRequest, whose field 2 is).
@pytest.mark.parametrize("method", ["GetItem", "ListItems", "Reserve", "Commit", "Release"])
@pytest.mark.parametrize("payload", [b"\x12\x10ab", b"\xff\xff\xff\xff", b"utf8"])
def test_bytes_that_are_not_the_request_are_invalid_argument(
    inventory: Inventory, method: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    if payload == b"utf8":
        payload = (b"\x12" if method == "ListItems" else b"\x0a") + b"\x02\xff\xfe"
    call = inventory.channel.unary_unary(f"/mesh.inventory.v1.InventoryService/{method}")
    error = rpc_error(call, payload)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert bad_request_fields(error) == ["request"]
    assert "is not a valid mesh.inventory.v1." in error.details()
    _no_tracebacks(caplog)
