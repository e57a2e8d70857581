"""Hostile input through the real Envoy edge harms nobody.

Every public RPC is fuzzed with random and hostile messages (huge strings, 10k-line orders,
unicode and control characters, forged page tokens, extreme integers) and with raw bytes that
are not the request at all. Each answer must be a success, NOT_FOUND, or INVALID_ARGUMENT
naming a field, in trailers under the error budget; and meanwhile another user's calls all
succeed, no service restarts, no log gets a traceback, and Envoy counts no protocol error or
upstream connection lost with requests on it.

Internal RPCs (Reserve, Commit, Release, Charge, Refund, VoidCharge) are refused at the edge;
their validation is covered by the services' servicer tests.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory_service.domain import CATALOG
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2
from mesh.notification.v1 import notification_pb2
from mesh.order.v1 import order_pb2
from mesh.payment.v1 import payment_pb2
from meshctl.stack import Stack
from meshkit.errors import trailer_bytes
from meshkit.ids import new_id
from meshkit.limits import ERROR_TRAILER_BUDGET_BYTES, MAX_RECEIVE_MESSAGE_BYTES
from meshkit.paging import _filter_digest

pytestmark = pytest.mark.stack

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Envoy counters that move when a connection breaks: a protocol error, or a connection
#: closed with requests still on it (what fails other users' calls on a shared connection).
WATCHED_COUNTERS = (
    "upstream_cx_protocol_error",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_destroy_remote_with_active_rq",
    "downstream_cx_protocol_error",
    "http2.rx_messaging_error",
    "http2.header_overflow",
    "http2.header_list_size_too_large",
)
PROGRAMS = ("inventory", "order", "payment_v1", "payment_v2", "notification")
CATALOG_SKUS = frozenset(entry.sku for entry in CATALOG)

Call = Callable[..., Any]


# --- strategies ---------------------------------------------------------------------------

_TRICKY = [
    "",
    "SKU-0001\n",
    "SKU-9999",
    "ZZ-1",
    "alice\n",
    "decline-bob",
    new_id("ord"),
    new_id("ord") + "\n",
    new_id("pay"),
    new_id("pay") + "\n",
    "\x00",
    "\r\n",
    "%s%n%%",
    "'\"\\",
    "\u202eevil",
    "é",
    "\U0001f600",
    "\uff33\uff2b\uff35-\uff10\uff10\uff10\uff11",  # SKU-0001 in fullwidth characters
]
small_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(_TRICKY),
    st.from_regex(r"[A-Za-z0-9._:-]{1,140}", fullmatch=True),
)
#: One huge value per request, at most ~100 KB of UTF-8, so every message stays under
#: MAX_RECEIVE_MESSAGE_BYTES and reaches validation.
huge_text = st.builds(
    lambda char, size: char * (size // len(char.encode())),
    st.sampled_from(["A", "é", "\U0001f600", "%", "\n", "[", "\x00", "SKU-"]),
    st.integers(1_000, 100_000),
)
# No catalogue SKU, so no generated order can reserve stock the other stack tests count on.
skus = st.one_of(small_text, st.from_regex(r"[A-Z0-9-]{1,34}", fullmatch=True)).filter(
    lambda sku: sku not in CATALOG_SKUS
)
int32s = st.one_of(
    st.sampled_from([0, 1, -1, 20, 100, 101, 1000, 1001, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _json_token(cursor: Any, digest: Any) -> str:
    return _b64(json.dumps({"c": cursor, "f": digest}).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
page_tokens = st.one_of(
    small_text,
    huge_text,
    st.binary(max_size=300).map(_b64),
    st.integers(1, 5_000).map(lambda depth: _b64(b"[" * depth)),
    st.builds(
        _json_token,
        st.fixed_dictionaries(
            {
                "t": st.one_of(st.integers(), st.sampled_from([10**30, -1, True, 1.5])),
                "id": st.one_of(small_text, st.just(new_id("ord"))),
            }
        )
        | st.fixed_dictionaries({"after": skus | st.sampled_from(sorted(CATALOG_SKUS))})
        | json_values,
        st.sampled_from([_filter_digest(""), _filter_digest("alice")]) | json_values,
    ),
)


#: SKUs short enough that 10,000 lines of them (23 bytes each at most) fit in a message.
short_skus = st.from_regex(r"[A-Za-z0-9 -]{1,8}", fullmatch=True).filter(
    lambda sku: sku not in CATALOG_SKUS
)


@st.composite
def create_orders(draw: st.DrawFn) -> order_pb2.CreateOrderRequest:
    """Hostile orders: ten thousand lines, or one huge value, or just odd ones."""
    request = order_pb2.CreateOrderRequest(
        customer_id=draw(small_text), request_id=draw(small_text)
    )
    shape = draw(st.sampled_from(["few", "many", "customer_id", "request_id", "sku"]))
    if shape == "many":
        line = money_pb2.Line(sku=draw(short_skus), quantity=draw(int32s))
        request.lines.extend([line] * draw(st.integers(51, 10_000)))
        return request
    for _ in range(draw(st.integers(0, 8))):
        request.lines.add(sku=draw(skus), quantity=draw(int32s))
    if shape == "sku":
        request.lines.add(sku=draw(huge_text), quantity=1)
    elif shape != "few":
        setattr(request, shape, draw(huge_text))
    return request


def _one_field(message: type[Message], name: str) -> st.SearchStrategy[Message]:
    return st.one_of(small_text, huge_text).map(lambda value: message(**{name: value}))


# --- calling and judging ------------------------------------------------------------------


def _judge(call: Call, request: object) -> str:
    """Calls, checks the answer, and returns its code's name."""
    try:
        call(request, timeout=15)
    except grpc.RpcError as error:
        _check_error(error)
        return str(error.code().name)
    return "OK"


def _check_error(error: grpc.RpcError) -> None:
    """NOT_FOUND, or INVALID_ARGUMENT naming a field; either in small trailers."""
    code = error.code()
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
        f"{code.name}: {error.details()}"
    )
    details_bin = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    assert trailer_bytes(error.details() or "", details_bin) <= ERROR_TRAILER_BUDGET_BYTES
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(error)
        assert status is not None
        bad_request = error_details_pb2.BadRequest()
        assert status.details
        assert status.details[0].Unpack(bad_request)
        assert bad_request.field_violations
        assert all(violation.field for violation in bad_request.field_violations)


def _counters(stack: Stack) -> dict[str, int]:
    counters: dict[str, int] = {}
    for line in stack.envoy.get("/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.endswith(WATCHED_COUNTERS) and value.isdigit():
            counters[name] = int(value)
    return counters


def _log_sizes(stack: Stack) -> dict[str, int]:
    return {name: stack.config.log_path(name).stat().st_size for name in PROGRAMS}


def _new_log_lines(stack: Stack, sizes: dict[str, int]) -> dict[str, str]:
    written: dict[str, str] = {}
    for name, size in sizes.items():
        with stack.config.log_path(name).open(errors="replace") as log:
            log.seek(size)
            written[name] = log.read()
    return written


@dataclass
class Bystander:
    """Another user's valid calls, on a channel of its own, for as long as the fuzzing runs."""

    calls: int = 0
    errors: list[str] = field(default_factory=list)


@contextmanager
def _watched(stack: Stack) -> Iterator[Bystander]:
    """Runs a bystander alongside, then checks nobody was harmed: its calls, the processes,
    the logs and Envoy's connection counters."""
    pids, counters, sizes = stack.supervisor.pids(), _counters(stack), _log_sizes(stack)
    bystander = Bystander()
    started, stop = threading.Event(), threading.Event()

    def valid_calls() -> None:
        with grpc.insecure_channel(stack.config.edge_target) as channel:
            get_item = channel.unary_unary(
                "/mesh.inventory.v1.InventoryService/GetItem",
                request_serializer=inventory_pb2.GetItemRequest.SerializeToString,
                response_deserializer=inventory_pb2.Item.FromString,
            )
            list_items = channel.unary_unary(
                "/mesh.inventory.v1.InventoryService/ListItems",
                request_serializer=inventory_pb2.ListItemsRequest.SerializeToString,
                response_deserializer=inventory_pb2.ListItemsResponse.FromString,
            )
            while True:
                try:
                    get_item(inventory_pb2.GetItemRequest(sku="SKU-0001"), timeout=10)
                    list_items(inventory_pb2.ListItemsRequest(page_size=5), timeout=10)
                except grpc.RpcError as error:
                    bystander.errors.append(f"{error.code().name}: {error.details()}")
                bystander.calls += 2
                started.set()
                if stop.wait(0.005):  # pacing only; nothing is timed
                    return

    thread = threading.Thread(target=valid_calls, name="bystander", daemon=True)
    thread.start()
    started.wait(timeout=30)  # its channel is up before the hostile calls begin
    try:
        yield bystander
    finally:
        stop.set()
        thread.join(timeout=30)
    assert bystander.calls > 0
    assert bystander.errors == []
    assert stack.supervisor.pids() == pids, "a service restarted"
    assert _counters(stack) == counters
    tracebacks = {
        name: text for name, text in _new_log_lines(stack, sizes).items() if "Traceback" in text
    }
    assert tracebacks == {}


def _unary(edge: grpc.Channel, path: str, request_type: type[Message]) -> Call:
    return edge.unary_unary(path, request_serializer=request_type.SerializeToString)


# --- the tests ----------------------------------------------------------------------------


def test_hostile_orders_harm_nobody(stack: Stack, edge: grpc.Channel) -> None:
    create = _unary(edge, "/mesh.order.v1.OrderService/CreateOrder", order_pb2.CreateOrderRequest)
    get = _unary(edge, "/mesh.order.v1.OrderService/GetOrder", order_pb2.GetOrderRequest)
    list_orders = _unary(
        edge, "/mesh.order.v1.OrderService/ListOrders", order_pb2.ListOrdersRequest
    )

    @FUZZ
    @given(
        create_orders(),
        _one_field(order_pb2.GetOrderRequest, "order_id"),
        st.builds(
            order_pb2.ListOrdersRequest,
            customer_id=small_text,
            page_size=int32s,
            page_token=page_tokens,
        ),
    )
    def fuzz(
        new: order_pb2.CreateOrderRequest,
        one: order_pb2.GetOrderRequest,
        page: order_pb2.ListOrdersRequest,
    ) -> None:
        assert new.ByteSize() < MAX_RECEIVE_MESSAGE_BYTES
        # Without a catalogue SKU no order can be valid: a success would be a validation hole.
        assert _judge(create, new) != "OK"
        _judge(get, one)
        _judge(list_orders, page)

    with _watched(stack):
        fuzz()


def test_hostile_catalogue_and_payment_reads_harm_nobody(stack: Stack, edge: grpc.Channel) -> None:
    get_item = _unary(
        edge, "/mesh.inventory.v1.InventoryService/GetItem", inventory_pb2.GetItemRequest
    )
    list_items = _unary(
        edge, "/mesh.inventory.v1.InventoryService/ListItems", inventory_pb2.ListItemsRequest
    )
    get_payment = _unary(
        edge, "/mesh.payment.v1.PaymentService/GetPayment", payment_pb2.GetPaymentRequest
    )

    @FUZZ
    @given(
        _one_field(inventory_pb2.GetItemRequest, "sku"),
        st.builds(inventory_pb2.ListItemsRequest, page_size=int32s, page_token=page_tokens),
        _one_field(payment_pb2.GetPaymentRequest, "payment_id"),
    )
    def fuzz(
        item: inventory_pb2.GetItemRequest,
        page: inventory_pb2.ListItemsRequest,
        payment: payment_pb2.GetPaymentRequest,
    ) -> None:
        _judge(get_item, item)
        _judge(list_items, page)
        _judge(get_payment, payment)

    with _watched(stack):
        fuzz()


def test_hostile_notification_reads_harm_nobody(stack: Stack, edge: grpc.Channel) -> None:
    list_notifications = _unary(
        edge,
        "/mesh.notification.v1.NotificationService/ListNotifications",
        notification_pb2.ListNotificationsRequest,
    )

    @FUZZ
    @given(
        st.builds(
            notification_pb2.ListNotificationsRequest,
            customer_id=st.one_of(small_text, huge_text),
            page_size=int32s,
            page_token=page_tokens,
        )
    )
    def fuzz(page: notification_pb2.ListNotificationsRequest) -> None:
        _judge(list_notifications, page)

    with _watched(stack):
        fuzz()


PUBLIC_METHODS = (
    "/mesh.order.v1.OrderService/CreateOrder",
    "/mesh.order.v1.OrderService/GetOrder",
    "/mesh.order.v1.OrderService/ListOrders",
    "/mesh.inventory.v1.InventoryService/GetItem",
    "/mesh.inventory.v1.InventoryService/ListItems",
    "/mesh.payment.v1.PaymentService/GetPayment",
    "/mesh.notification.v1.NotificationService/ListNotifications",
)

#: Bytes that are no message at all: a tag of field number 0, an over-long varint, and
#: length-delimited fields cut short.
_GARBAGE = [b"\x00", b"\xff" * 11, b"\x12\x10ab", b"\x1a\xff\xff\xff\xff\x0f"]
#: Each method's first string field holding bytes that are not UTF-8.
_NOT_UTF8 = {
    path: (b"\x12" if path.endswith("/ListItems") else b"\x0a") + b"\x02\xff\xfe"
    for path in PUBLIC_METHODS
}


def test_raw_garbage_bytes_harm_nobody(stack: Stack, edge: grpc.Channel) -> None:
    calls = {path: edge.unary_unary(path) for path in PUBLIC_METHODS}  # bytes in, bytes out

    @FUZZ
    @given(
        st.sampled_from(PUBLIC_METHODS),
        st.one_of(st.sampled_from(_GARBAGE), st.binary(max_size=2_000)),
    )
    def fuzz(path: str, payload: bytes) -> None:
        _judge(calls[path], payload)

    with _watched(stack):
        fuzz()
        for path, call in calls.items():
            for payload in [*_GARBAGE, _NOT_UTF8[path]]:
                assert _judge(call, payload) == "INVALID_ARGUMENT", (path, payload)


def test_a_message_over_the_limit_is_resource_exhausted_and_harms_nobody(
    stack: Stack, edge: grpc.Channel
) -> None:
    get_item = _unary(
        edge, "/mesh.inventory.v1.InventoryService/GetItem", inventory_pb2.GetItemRequest
    )
    with _watched(stack), pytest.raises(grpc.RpcError) as caught:
        get_item(inventory_pb2.GetItemRequest(sku="A" * MAX_RECEIVE_MESSAGE_BYTES), timeout=15)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
