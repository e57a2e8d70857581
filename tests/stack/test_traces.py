"""One CreateOrder through the edge is one trace across Envoy, order, inventory and payment:

    envoy SERVER .../CreateOrder                      the edge; upstream_cluster: order
    +- order SERVER .../CreateOrder
       +- saga.reserve                                (and saga.charge, saga.commit)
          +- .../Reserve                              the resilience library's logical call
             +- CLIENT .../Reserve attempt 1          rpc.*: the request on the wire
                +- envoy SERVER .../Reserve           the internal listener; upstream_cluster
                   +- inventory SERVER .../Reserve
                      +- sqlite write inventory.db, Redis commands

A stack of its own exports to a real OTLP/gRPC receiver on a free port, the way
`OTEL_EXPORTER_OTLP_ENDPOINT=... make up` exports to Jaeger; the trace is found by the
x-trace-id header the edge answers with. The stack's Prometheus keeps the exemplars of
order_create_duration_seconds, each the trace id of a sampled CreateOrder.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
import urllib.request
import uuid

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl.stack import Stack
from meshkit import order_events
from meshkit.testing import wait_until
from meshkit.trace_testing import OtlpReceiver, ReceivedSpan
from meshkit.tracing import TRACE_ID_HEADER
from order_service import metric_names

pytestmark = pytest.mark.stack

SKU = "SKU-0018"
ORDER = "/mesh.order.v1.OrderService/CreateOrder"
GET_PAYMENT = "/mesh.payment.v1.PaymentService/GetPayment"
#: The saga's steps for a confirmed order, each with the call it makes.
STEPS = {
    "saga.reserve": "/mesh.inventory.v1.InventoryService/Reserve",
    "saga.charge": "/mesh.payment.v1.PaymentService/Charge",
    "saga.commit": "/mesh.inventory.v1.InventoryService/Commit",
}


def create_order(stack: Stack) -> tuple[order_pb2.Order, str]:
    """A confirmed CreateOrder through the edge, and the trace id it answered with."""
    with grpc.insecure_channel(stack.config.edge_target) as edge:
        order, call = order_pb2_grpc.OrderServiceStub(edge).CreateOrder.with_call(
            order_pb2.CreateOrderRequest(
                customer_id="cust-traces",
                request_id=f"traces-{uuid.uuid4()}",
                lines=[money_pb2.Line(sku=SKU, quantity=1)],
            ),
            timeout=30,
        )
    assert order.status == order_pb2.ORDER_STATUS_CONFIRMED, order.failure_reason
    headers = dict(call.initial_metadata())
    assert TRACE_ID_HEADER in headers, headers
    return order, headers[TRACE_ID_HEADER]


def _one(spans: list[ReceivedSpan], service: str, kind: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if (s.service, s.kind, s.name) == (service, kind, name)]
    assert len(found) == 1, f"{service} {kind} {name}: {len(found)} spans"
    return found[0]


def _child(spans: list[ReceivedSpan], parent: ReceivedSpan, kind: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.parent_id == parent.span_id and (s.kind, s.name) == (kind, name)]
    assert len(found) == 1, f"{kind} {name} under {parent.name}: {len(found)} spans"
    return found[0]


def _upstream(by_id: dict[str, ReceivedSpan], server: ReceivedSpan) -> tuple[ReceivedSpan, str]:
    """The Envoy SERVER span a backend's SERVER span was proxied through, and its cluster."""
    ingress = by_id[server.parent_id]
    assert (ingress.service, ingress.kind) == ("envoy", "SERVER"), ingress
    # Envoy's span is named after the method, as the backend's own is.
    assert ingress.name == server.name
    return ingress, str(ingress.attributes["upstream_cluster"])


def _complete(spans: list[ReceivedSpan]) -> bool:
    """Every saga step's call has reached its server, and every parent is in."""
    ids = {s.span_id for s in spans}
    servers = {(s.service, s.name) for s in spans if s.kind == "SERVER"}
    wanted = {("order", ORDER)} | {(c.split(".")[1], c) for c in STEPS.values()}
    proxied = sum(1 for s in spans if s.service == "envoy") == 1 + len(STEPS)
    return wanted <= servers and proxied and all(s.parent_id in ids for s in spans if s.parent_id)


def test_one_order_is_one_trace_with_each_hop_under_the_call_that_made_it(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    order, trace_id = create_order(traced_stack)
    spans = receiver.wait_for(_complete, trace_id=trace_id)
    assert {s.service for s in spans} >= {"order", "inventory", "payment"}
    by_id = {s.span_id: s for s in spans}

    # Nobody upstream traced the call: the edge starts the trace.
    (edge,) = [s for s in spans if s.parent_id == ""]
    assert (edge.service, edge.kind) == ("envoy", "SERVER")
    root = _one(spans, "order", "SERVER", ORDER)
    assert _upstream(by_id, root) == (edge, "order")
    for step, method in STEPS.items():
        step_span = _one(spans, "order", "INTERNAL", step)
        assert step_span.parent_id == root.span_id
        assert step_span.attributes["order.id"] == order.order_id
        assert step_span.attributes["saga.outcome"] == "OK"
        # The resilience library's span of the logical call, the CLIENT span of its one
        # attempt, Envoy's internal listener, and the callee's SERVER span: the attempt's
        # traceparent crosses Envoy.
        call = _child(spans, step_span, "INTERNAL", method)
        assert call.attributes["resilience.attempts"] == 1
        attempt = _child(spans, call, "CLIENT", f"{method} attempt 1")
        assert attempt.attributes["resilience.attempt"] == 1
        assert attempt.attributes["rpc.grpc.status_code"] == 0
        assert attempt.attributes["rpc.method"] == method.rsplit("/", 1)[1]
        callee = method.split(".")[1]
        server = _one(spans, callee, "SERVER", method)
        ingress, cluster = _upstream(by_id, server)
        assert ingress.parent_id == attempt.span_id
        assert cluster.startswith(callee)  # inventory, payment_v1 or payment_v2
        assert server.attributes["rpc.grpc.status_code"] == 0

    charge = _one(spans, "payment", "SERVER", STEPS["saga.charge"])
    assert charge.resource["service.version"] in ("v1", "v2")
    # Each service's SQLite write transactions are spans under the call that made them.
    writes = {(s.service, by_id[s.parent_id].name) for s in spans if s.name.startswith("sqlite")}
    assert ("payment", STEPS["saga.charge"]) in writes
    assert ("inventory", STEPS["saga.reserve"]) in writes
    # Redis commands (the order's claim, inventory's cache) are spans of the same trace.
    assert any(s.attributes.get("db.system") == "redis" for s in spans)


def test_the_orders_event_is_consumed_in_its_trace_and_background_polls_are_no_traces(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    order, trace_id = create_order(traced_stack)

    def consumed(spans: list[ReceivedSpan]) -> bool:
        return any(s.service == "notification" and s.kind == "CONSUMER" for s in spans)

    spans = receiver.wait_for(consumed, trace_id=trace_id)
    by_id = {s.span_id: s for s in spans}
    (consumer,) = [s for s in spans if s.service == "notification" and s.kind == "CONSUMER"]
    assert consumer.name == f"process {order_events.STREAM}"
    assert consumer.attributes["messaging.message.id"] == order_events.event_id(
        order.order_id, order_events.STATUS_CONFIRMED
    )
    # A child of the order's span that wrote the event (the saga's last step), and the
    # notification's SQLite write is under it.
    assert by_id[consumer.parent_id].service == "order"
    assert any(s.parent_id == consumer.span_id and s.name.startswith("sqlite") for s in spans)
    # The relay's publishes and the consumers' polls, claims and acks start no trace.
    loops = {"XADD", "XREADGROUP", "XACK", "XAUTOCLAIM", "XINFO GROUPS", "XPENDING"}
    roots = {s.name.split(" ")[0] for s in receiver.spans() if not s.parent_id}
    assert not any(name.split(" ")[0] in roots for name in loops), roots


def test_the_edge_answers_with_the_trace_id_of_an_unsampled_call_and_of_a_refused_one(
    traced_stack: Stack,
) -> None:
    """A caller that sampled its trace out is still told its id, and so is one Envoy itself
    refuses (no service saw it)."""
    trace_id = secrets.token_hex(16)
    traceparent = ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-00")
    with grpc.insecure_channel(traced_stack.config.edge_target) as edge:
        order, call = order_pb2_grpc.OrderServiceStub(edge).CreateOrder.with_call(
            order_pb2.CreateOrderRequest(
                customer_id="cust-traces",
                request_id=f"traces-{uuid.uuid4()}",
                lines=[money_pb2.Line(sku=SKU, quantity=1)],
            ),
            timeout=30,
            metadata=[traceparent],
        )
        with pytest.raises(grpc.RpcError) as denied:
            payment_pb2_grpc.PaymentServiceStub(edge).Charge(
                payment_pb2.ChargeRequest(), timeout=10
            )
    assert order.status == order_pb2.ORDER_STATUS_CONFIRMED
    assert dict(call.initial_metadata())[TRACE_ID_HEADER] == trace_id
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # Envoy's own answer is trailers-only: its headers are the call's trailing metadata.
    refused = dict(denied.value.trailing_metadata())[TRACE_ID_HEADER]
    assert len(refused) == 32
    assert refused != trace_id


def test_a_canary_pinned_call_shows_the_v2_cluster_and_the_v2_deployment(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    order, _ = create_order(traced_stack)
    with grpc.insecure_channel(traced_stack.config.edge_target) as edge:
        _, call = payment_pb2_grpc.PaymentServiceStub(edge).GetPayment.with_call(
            payment_pb2.GetPaymentRequest(payment_id=order.payment_id),
            timeout=10,
            metadata=[("x-canary", "always")],
        )
    trace_id = dict(call.initial_metadata())[TRACE_ID_HEADER]
    # The payment's span, and the edge's.
    spans = receiver.wait_for(
        lambda found: {s.service for s in found} == {"envoy", "payment"} and len(found) >= 2,
        trace_id=trace_id,
    )
    by_id = {s.span_id: s for s in spans}
    server = _one(spans, "payment", "SERVER", GET_PAYMENT)
    assert server.resource["service.version"] == "v2"
    _, cluster = _upstream(by_id, server)
    assert cluster == "payment_v2"


def _exemplar_trace_ids(stack: Stack, since: float) -> set[str]:
    """The trace ids of the exemplars Prometheus holds for CreateOrder's histogram."""
    params = urllib.parse.urlencode(
        {
            "query": f"{metric_names.CREATE_DURATION}_bucket",
            "start": f"{since:.3f}",
            "end": f"{time.time() + 60:.3f}",
        }
    )
    url = f"{stack.config.prometheus_url}/api/v1/query_exemplars?{params}"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http, built here)
        body = json.load(response)
    assert body["status"] == "success", body
    return {
        exemplar["labels"]["trace_id"]
        for series in body["data"]
        for exemplar in series["exemplars"]
    }


def test_create_orders_latency_exemplars_in_prometheus_name_traces_the_collector_received(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    since = time.time() - 1
    answered: set[str] = set()
    found: set[str] = set()

    def linked() -> bool:
        # An order per look, so the histogram moves between Prometheus's 5 s scrapes.
        answered.add(create_order(traced_stack)[1])
        found.update(_exemplar_trace_ids(traced_stack, since))
        received = {s.trace_id for s in receiver.spans() if s.service == "order"}
        return bool(found & answered & received)

    try:
        wait_until(linked, timeout_s=30, interval_s=1.0, what="an exemplar of a received trace")
    except TimeoutError:
        pytest.fail(f"exemplars {sorted(found)}, orders' traces {sorted(answered)}")
