"""CreateOrder's AIP-155 request_id semantics, validation of every RPC, GetOrder and ListOrders."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

import resilience
from mesh.order.v1 import order_pb2
from meshkit.errors import PUSHBACK_HEADER, trailer_bytes
from meshkit.ids import new_id
from meshkit.limits import ERROR_TRAILER_BUDGET_BYTES, MAX_FIELD_VIOLATIONS
from meshkit.paging import INT64_MAX, _filter_digest
from meshkit.testing import field_violations, redis_server
from order_service import metric_names as m
from order_service.claims import Claim, claim_key
from order_service.domain import new_order, validate_create
from order_service.leases import lease_key
from order_service.server import OrderApp
from order_service.servicer import ANSWER_MARGIN_S, wait_budget
from order_service.store import Stuck

from .conftest import (
    SEED_STOCK,
    Inventory,
    Order,
    Payments,
    StartOrder,
    proto_lines,
)

CONFIRMED = order_pb2.ORDER_STATUS_CONFIRMED
#: The Redis commands a CreateOrder makes, counted by INFO commandstats (scripts' too).
COUNTED = ("evalsha", "time", "get", "set", "exists", "incr", "pexpire", "del")


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


def test_a_create_order_costs_the_order_service_one_redis_round_trip(
    order: Order, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    order.create("cust-1", ("SKU-0004", 1), request_id="warm-1")  # loads the scripts

    def calls() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in COUNTED}

    before = calls()
    # A customer with nothing in flight, as most orders are: one mid-burst pays one SET more
    # (tests/order/test_ratelimit.py counts each branch).
    placed = order.create("cust-2", ("SKU-0004", 1), request_id="count-1")
    spent = {name: n - before[name] for name, n in calls().items()}

    assert placed.status == CONFIRMED
    # One script admits the order: the request_id claim (SET NX GET), the customer's rate
    # limit (SET NX PX: its arrival time is the key's expiry, on Redis's clock, so no TIME) and
    # the lease (SET NX; its fencing token is the first, with no counter); then inventory drops
    # the SKU's cached entry after Reserve (DEL): five commands. The finished
    # order's lease is left to expire. (The order's event, XADDed by the outbox relay, is not
    # counted here.)
    assert spent == {
        "evalsha": 1,
        "time": 0,
        "get": 0,
        "set": 3,
        "exists": 0,
        "incr": 0,
        "pexpire": 0,
        "del": 1,
    }
    assert (
        0 < client.pttl(lease_key(placed.customer_id, placed.order_id)) <= order.settings.lease_ms
    )


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
    assert set(field_violations(caught.value)) == {
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
    assert set(field_violations(caught.value)) == {"lines"}


@pytest.mark.parametrize("order_id", ["", "ord_xyz", "pay_" + "0" * 32, "ord_" + "A" * 32])
def test_get_order_with_a_malformed_id_is_invalid(order: Order, order_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        order.get(order_id)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"order_id"}


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
    assert set(field_violations(caught.value)) == {"customer_id", "page_size", "page_token"}


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
    assert set(field_violations(caught.value)) == {"page_token"}


def test_a_claim_whose_runner_died_before_inserting_is_taken_over(
    order: Order, app: OrderApp, payments: Payments
) -> None:
    request = validate_create("cust-1", [("SKU-0015", 1)], "orphan-1")
    orphan = Claim(new_id("ord"), request.fingerprint)
    lease = app.leases.lease(orphan.order_id, customer_id="cust-1")
    assert app.claims.claim("orphan-1", orphan, lease) is None  # then the process died
    app.redis.delete(lease.key)  # and its lease ran out

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


# --- the per-customer rate limit ------------------------------------------------------------

#: Two orders at once, then one per 100 s: the tests' own time never lets one more in.
SLOW_LIMIT = {"ORDER_RATE_PER_S": "0.01", "ORDER_RATE_BURST": "2"}


def decisions() -> dict[str, float]:
    """This process's order_rate_limit_decisions_total, by outcome."""
    return {
        sample.labels[m.OUTCOME]: sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == m.RATE_LIMIT_DECISIONS
    }


def decided_since(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in decisions().items() if v != before.get(k, 0)}


def test_a_customer_over_the_rate_limit_is_refused_with_retry_info_and_others_are_not(
    start_order: StartOrder, inventory: Inventory
) -> None:
    order = start_order(**SLOW_LIMIT)
    before = decisions()
    for n in range(2):
        placed = order.create("cust-busy", ("SKU-0017", 1), request_id=f"busy-{n}")
        assert placed.status == CONFIRMED

    with pytest.raises(grpc.RpcError) as caught:
        order.create("cust-busy", ("SKU-0017", 1), request_id="busy-2")

    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    pushback_ms = int(dict(error.trailing_metadata())[PUSHBACK_HEADER])
    assert 90_000 < pushback_ms <= 100_000  # the first of the burst is a full interval away
    assert error.details() == (
        "customer 'cust-busy' is over the order rate limit (0.01/s per customer,"
        f" bursts of 2); try again in {pushback_ms} ms"
    )
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == pushback_ms
    # Refused before anything was claimed, reserved or charged.
    assert inventory.available("SKU-0017") == SEED_STOCK - 2
    assert claim_holder(order, "cust-busy", "busy-2") is None

    assert order.create("cust-calm", ("SKU-0017", 1), request_id="calm-0").status == CONFIRMED
    assert decided_since(before) == {"allowed": 3, "limited": 1}


def test_a_retry_of_an_accepted_request_is_answered_and_not_charged_again(
    start_order: StartOrder, payments: Payments
) -> None:
    order = start_order(**SLOW_LIMIT)
    first = order.create("cust-retry", ("SKU-0018", 1), request_id="retry-0")
    order.create("cust-retry", ("SKU-0018", 1), request_id="retry-1")
    before = decisions()

    # At its limit, the customer still gets its accepted order back, as often as it asks.
    for _ in range(5):
        assert order.create("cust-retry", ("SKU-0018", 1), request_id="retry-0") == first
    assert decided_since(before) == {}
    assert payments.states(first.order_id) == ["CAPTURED"]
    with pytest.raises(grpc.RpcError) as caught:
        order.create("cust-retry", ("SKU-0018", 1), request_id="retry-2")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_with_redis_down_a_new_order_is_unavailable_and_counted_as_such_by_the_limit(
    start_order: StartOrder,
) -> None:
    with redis_server() as private:
        order = start_order(REDIS_URL=private.url, **SLOW_LIMIT)
        private.process.terminate()
        private.process.wait()
        before = decisions()

        with pytest.raises(grpc.RpcError) as caught:
            order.create("cust-outage", ("SKU-0019", 1), request_id="outage-0")

        # The claim and the limit are one script: neither is applied, and no saga starts.
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "redis unavailable (ConnectionError)"
        assert decided_since(before) == {"redis_unavailable": 1}
        order.stop()


def claim_holder(order: Order, customer_id: str, request_id: str) -> Claim | None:
    """Who holds a request_id's claim in the order's Redis."""
    raw = redis.Redis.from_url(order.settings.redis_url).get(claim_key(customer_id, request_id))
    return None if raw is None else Claim.decode(raw)


# --- hostile input: every answer is INVALID_ARGUMENT naming a field, small, no traceback ----


def _invalid(call: Callable[..., object], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    details_bin = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert trailer_bytes(error.details() or "", details_bin) <= ERROR_TRAILER_BUDGET_BYTES
    return error


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [record.getMessage() for record in caplog.records if record.exc_info]


@pytest.mark.parametrize(
    "order_id", [new_id("ord") + "\n", "A" * 4000, "ord_" + "0" * 100_000, "\x00" * 40]
)
def test_get_order_refuses_a_hostile_id(
    order: Order, order_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = _invalid(order.stub.GetOrder, order_pb2.GetOrderRequest(order_id=order_id))
    assert set(field_violations(error)) == {"order_id"}
    _no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("lines", "fields"),
    [
        ([("bad", 0)] * 60, None),
        ([("bad", 0)] * 300, None),
        ([(f"SKU-{index:05d}", 1) for index in range(10_000)], {"lines"}),
        ([("A" * 20_000, 1)], {"lines[0].sku"}),
        (
            [("SKU-0001", -(2**31)), ("SKU-0002", 2**31 - 1)],
            {"lines[0].quantity", "lines[1].quantity"},
        ),
    ],
)
def test_create_order_refuses_hostile_lines_in_small_trailers(
    order: Order,
    lines: list[tuple[str, int]],
    fields: set[str] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = order_pb2.CreateOrderRequest(
        customer_id="alice", request_id=new_id("req"), lines=proto_lines(*lines)
    )
    found = field_violations(_invalid(order.stub.CreateOrder, request))
    if fields is None:  # more bad lines than an error lists: the rest are counted
        assert len(found) == MAX_FIELD_VIOLATIONS + 1
        assert found["request"].endswith("more not listed")
    else:
        assert set(found) == fields
    _no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("field", "value"),
    [("customer_id", "alice\n"), ("request_id", "r1\n"), ("customer_id", "é" * 100_000)],
)
def test_create_order_refuses_a_hostile_id(order: Order, field: str, value: str) -> None:
    fields = {"customer_id": "alice", "request_id": new_id("req"), field: value}
    request = order_pb2.CreateOrderRequest(lines=proto_lines(("SKU-0001", 1)), **fields)
    assert set(field_violations(_invalid(order.stub.CreateOrder, request))) == {field}


def _crafted_token(cursor: object, customer_id: str = "") -> str:
    """What a client could forge knowing the token format, with a valid filter digest."""
    payload = {"c": cursor, "f": _filter_digest(customer_id)}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 2000).decode(),
        _crafted_token({"t": 10**30, "id": "x"}),
        _crafted_token({"t": 10**30, "id": new_id("ord")}),
        _crafted_token({"t": -1, "id": new_id("ord")}),
        _crafted_token({"t": True, "id": new_id("ord")}),
        _crafted_token({"t": 1, "id": new_id("ord") + "\n"}),
        _crafted_token({"t": 1, "id": 7}),
        _crafted_token([]),
        "A" * 100_000,
    ],
)
def test_list_orders_refuses_a_crafted_page_token(
    order: Order, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = _invalid(order.stub.ListOrders, order_pb2.ListOrdersRequest(page_token=token))
    assert set(field_violations(error)) == {"page_token"}
    _no_tracebacks(caplog)


def test_list_orders_accepts_a_crafted_token_in_range(order: Order) -> None:
    token = _crafted_token({"t": INT64_MAX, "id": new_id("ord")}, "alice")
    page = order.stub.ListOrders(
        order_pb2.ListOrdersRequest(customer_id="alice", page_token=token), timeout=5
    )
    assert list(page.orders) == []


@pytest.mark.parametrize("page_size", [-(2**31), -1, 101, 2**31 - 1])
def test_list_orders_refuses_an_extreme_page_size(order: Order, page_size: int) -> None:
    error = _invalid(order.stub.ListOrders, order_pb2.ListOrdersRequest(page_size=page_size))
    assert set(field_violations(error)) == {"page_size"}


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("CreateOrder", b"\x0a\x02\xff\xfe"),  # customer_id holding bytes that are not UTF-8
        ("GetOrder", b"\xff\xff\xff\xff"),
        ("ListOrders", b"\x1a\x10abc"),  # page_token cut short
    ],
)
def test_bytes_that_are_not_the_request_are_invalid_argument(
    order: Order, method: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    call = order.channel.unary_unary(f"/mesh.order.v1.OrderService/{method}")
    error = _invalid(call, payload)
    assert field_violations(error) == {"request": f"is not a valid mesh.order.v1.{method}Request"}
    _no_tracebacks(caplog)


def test_a_duplicate_waits_for_what_is_left_of_the_captured_deadline() -> None:
    assert wait_budget(30.0) == 30.0  # no inbound deadline: the cap
    with resilience.deadline_scope(2.0):
        assert 2.0 - ANSWER_MARGIN_S - 0.1 < wait_budget(30.0) <= 2.0 - ANSWER_MARGIN_S
        assert wait_budget(0.5) == 0.5
    with resilience.deadline_scope(ANSWER_MARGIN_S / 2):
        assert wait_budget(30.0) == 0.0


def crashed_mid_saga(app: OrderApp, inventory: Inventory, request_id: str) -> str:
    """What a runner killed inside Charge leaves: its claim, the order at RESERVE, the stock
    reserved, and its lease, which nobody renews any more and runs out in 0.3 s."""
    request = validate_create("cust-1", [("SKU-0011", 1)], request_id)
    order_id = new_id("ord")
    lease = app.leases.lease(order_id, customer_id="cust-1")
    assert app.claims.claim(request_id, Claim(order_id, request.fingerprint), lease) is None
    app.store.insert(new_order(order_id, request), fence=1)
    inventory.reserve(order_id, ("SKU-0011", 1))
    lease.forget()  # the keep-alive died with its process
    app.redis.pexpire(lease.key, 300)
    return order_id


def test_a_retry_finishes_the_order_of_a_runner_that_died_mid_saga(
    order: Order, app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order_id = crashed_mid_saga(app, inventory, "crash-1")

    retried = order.create("cust-1", ("SKU-0011", 1), request_id="crash-1", timeout=10)

    # It waited out the dead runner's lease, then ran the saga on from RESERVE itself.
    assert (retried.order_id, retried.status) == (order_id, CONFIRMED)
    assert inventory.available("SKU-0011") == SEED_STOCK - 1
    assert payments.states(order_id) == ["CAPTURED"]
    assert order.get(order_id) == retried


def test_a_retry_of_an_order_that_needs_a_person_answers_at_once_saying_why(
    order: Order, app: OrderApp, inventory: Inventory, payments: Payments
) -> None:
    order_id = crashed_mid_saga(app, inventory, "stuck-1")
    app.redis.delete(lease_key("cust-1", order_id))
    reason = "RELEASE has failed 5 runs in a row (dependency_rejected)"
    app.store.mark_stuck(order_id, Stuck(runs=5, retry_time_us=2**62, attention_reason=reason))

    retried = order.create("cust-1", ("SKU-0011", 1), request_id="stuck-1", timeout=10)

    # Recovery owns a stuck order's retries: the duplicate neither waits nor runs it.
    assert retried.status == order_pb2.ORDER_STATUS_PENDING
    assert retried.attention_reason == reason
    assert order.get(order_id) == retried
    listed = order.stub.ListOrders(order_pb2.ListOrdersRequest(customer_id="cust-1"), timeout=5)
    assert [o.attention_reason for o in listed.orders if o.order_id == order_id] == [reason]
    assert payments.states(order_id) == []
