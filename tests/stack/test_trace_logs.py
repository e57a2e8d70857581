"""The logs join the traces, on the traced stack (MESH_LOG_LEVEL=DEBUG):

    one CreateOrder through the edge, answered with x-trace-id T
    +- order's log:         each line about the order has trace_id T, a span_id of one of
    |                       order's spans of T, its order_id and its request_id
    +- Envoy's access log:  a JSON line per hop with trace_id T: the edge's to cluster order,
                            the internal listener's to inventory and payment, grpc_status 0

and a request with bad input is logged by Envoy with its status and by no service with a
traceback. A call whose trace a test must find sends its own traceparent.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl.stack import Stack
from meshkit import logs
from meshkit.testing import wait_until
from meshkit.trace_testing import OtlpReceiver
from meshkit.tracing import TRACE_ID_HEADER

pytestmark = pytest.mark.stack

SKU = "SKU-0017"
CREATE_ORDER = "/mesh.order.v1.OrderService/CreateOrder"
#: The calls of a confirmed order's saga on the internal listener, and the cluster of each.
SAGA_CALLS = {
    "/mesh.inventory.v1.InventoryService/Reserve": {"inventory"},
    "/mesh.payment.v1.PaymentService/Charge": {"payment_v1", "payment_v2"},
    "/mesh.inventory.v1.InventoryService/Commit": {"inventory"},
}
SERVICES = ("inventory", "order", "payment_v1", "payment_v2")
Line = dict[str, Any]


def json_lines(path: Path, start: int = 0) -> list[Line]:
    """The JSON objects among the lines of ``path`` from byte ``start`` on."""
    with path.open("rb") as log:
        log.seek(start)
        text = log.read().decode("utf-8", "replace")
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                found.append(value)
    return found


def wait_for_lines(
    path: Path, done: Callable[[list[Line]], bool], what: str, start: int = 0
) -> list[Line]:
    """The JSON lines of ``path`` once ``done`` holds for them (Envoy writes its access log
    every second; supervisord copies a service's lines as they come)."""
    seen: list[Line] = []

    def ready() -> bool:
        seen[:] = json_lines(path, start) if path.is_file() else []
        return done(seen)

    wait_until(ready, timeout_s=20, interval_s=0.1, what=what)
    return seen


def traceparent() -> tuple[str, tuple[str, str]]:
    """A new trace id, and the header that makes Envoy's span (and every later one) its own."""
    trace_id = secrets.token_hex(16)
    return trace_id, ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")


def create_order(stack: Stack, customer: str = "cust-logs") -> tuple[order_pb2.Order, str]:
    """A confirmed CreateOrder through the edge, and the trace id it answered with."""
    with grpc.insecure_channel(stack.config.edge_target) as edge:
        order, call = order_pb2_grpc.OrderServiceStub(edge).CreateOrder.with_call(
            order_pb2.CreateOrderRequest(
                customer_id=customer,
                request_id=f"logs-{uuid.uuid4()}",
                lines=[money_pb2.Line(sku=SKU, quantity=1)],
            ),
            timeout=30,
        )
    assert order.status == order_pb2.ORDER_STATUS_CONFIRMED, order.failure_reason
    return order, dict(call.initial_metadata())[TRACE_ID_HEADER]


def order_lines(stack: Stack, order_id: str, start: int = 0) -> list[Line]:
    """order's lines about ``order_id``, once its three saga steps have logged."""
    lines = wait_for_lines(
        stack.config.log_path("order"),
        lambda seen: sum(line.get(logs.ORDER_ID) == order_id for line in seen) >= len(SAGA_CALLS),
        f"order's DEBUG line for each saga step of {order_id}",
        start,
    )
    return [line for line in lines if line.get(logs.ORDER_ID) == order_id]


def test_an_orders_lines_carry_its_trace_span_order_and_request(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    order, trace_id = create_order(traced_stack)
    lines = order_lines(traced_stack, order.order_id)
    spans = receiver.wait_for(
        lambda found: any(s.service == "order" and s.kind == "SERVER" for s in found),
        trace_id=trace_id,
    )
    order_spans = {s.span_id for s in spans if s.service == "order"}
    for line in lines:
        assert line[logs.SERVICE] == "order"
        assert line[logs.LEVEL] == "DEBUG"
        assert line[logs.TRACE_ID] == trace_id
        assert line[logs.SPAN_ID] in order_spans, line
        assert line[logs.REQUEST_ID] == order.request_id
        assert line[logs.MESSAGE].startswith(f"{order.order_id}: ")


def test_envoys_access_log_has_a_json_line_per_hop_of_the_order_with_its_trace_id(
    traced_stack: Stack,
) -> None:
    _, trace_id = create_order(traced_stack)
    hops = wait_for_lines(
        traced_stack.config.access_log,
        lambda seen: sum(line.get("trace_id") == trace_id for line in seen) >= 1 + len(SAGA_CALLS),
        f"Envoy's access log lines of trace {trace_id}",
    )
    mine = [line for line in hops if line.get("trace_id") == trace_id]
    by_path = {line["path"]: line for line in mine}
    assert sorted(by_path) == sorted([CREATE_ORDER, *SAGA_CALLS]), mine
    edge = by_path[CREATE_ORDER]
    order_port = traced_stack.config.ports["ORDER_PORT"]
    assert edge["listener"] == "edge"
    assert edge["service"] == "envoy"
    assert (edge["method"], edge["response_code"], edge["grpc_status"]) == ("POST", 200, 0)
    assert (edge["upstream_cluster"], edge["upstream_host"]) == ("order", f"127.0.0.1:{order_port}")
    assert edge["response_flags"] == "-"
    assert isinstance(edge["duration_ms"], int)
    for path, clusters in SAGA_CALLS.items():
        hop = by_path[path]
        assert hop["listener"] == "internal"
        assert hop["upstream_cluster"] in clusters, hop
        assert hop["grpc_status"] == 0


def test_bad_input_is_logged_with_its_status_and_without_a_traceback(
    traced_stack: Stack,
) -> None:
    config = traced_stack.config
    sizes = {name: config.log_path(name).stat().st_size for name in SERVICES}
    bad_order, bad_order_parent = traceparent()
    refused_charge, refused_charge_parent = traceparent()
    with grpc.insecure_channel(config.edge_target) as edge:
        with pytest.raises(grpc.RpcError) as invalid:
            order_pb2_grpc.OrderServiceStub(edge).CreateOrder(
                order_pb2.CreateOrderRequest(
                    customer_id="cust-logs",
                    request_id=f"logs-{uuid.uuid4()}",
                    lines=[money_pb2.Line(sku=SKU, quantity=0)],
                ),
                timeout=10,
                metadata=[bad_order_parent],
            )
        # Envoy answers this itself, trailers-only: the status is in the response headers.
        with pytest.raises(grpc.RpcError) as denied:
            payment_pb2_grpc.PaymentServiceStub(edge).Charge(
                payment_pb2.ChargeRequest(), timeout=10, metadata=[refused_charge_parent]
            )
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # A later order's lines in order's log mean everything order logged before is there too.
    later, _ = create_order(traced_stack)
    order_lines(traced_stack, later.order_id, sizes["order"])
    for name in SERVICES:
        with config.log_path(name).open(errors="replace") as log:
            log.seek(sizes[name])
            written = log.read()
        assert "Traceback" not in written, f"{name}: {written}"
        assert [line for line in json_lines(config.log_path(name)) if logs.EXCEPTION in line] == []

    statuses = {bad_order: 3, refused_charge: 7}
    access = wait_for_lines(
        config.access_log,
        lambda seen: statuses.keys() <= {line.get("trace_id") for line in seen},
        "Envoy's access log lines of the two refused calls",
    )
    logged = {line["trace_id"]: line for line in access if line.get("trace_id") in statuses}
    assert {trace: line["grpc_status"] for trace, line in logged.items()} == statuses
    assert logged[bad_order]["upstream_cluster"] == "order"
    assert logged[refused_charge]["upstream_cluster"] is None  # no backend saw it
