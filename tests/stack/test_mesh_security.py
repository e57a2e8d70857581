"""The two faces of Envoy and the mTLS mesh behind them, against the running stack.

The edge serves the public API only; the internal listener wants a certificate from the mesh CA
and lets only the order workload move money or stock; backends answer only Envoy.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.message import Message

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2
from meshctl.registry import INVENTORY_SERVICE, PAYMENT_SERVICE
from meshctl.stack import Stack
from meshctl.testing import running_stack
from meshkit.tls import WorkloadTls

from ._probes import metric_sum

pytestmark = pytest.mark.stack

ORDER_ID = f"ord_{'0' * 32}"
#: Every RPC that moves money or stock, with a request the backend would act on.
INTERNAL_RPCS: dict[str, Message] = {
    f"/{INVENTORY_SERVICE}/Reserve": inventory_pb2.ReserveRequest(
        order_id=ORDER_ID, lines=[money_pb2.Line(sku="SKU-0002", quantity=1)]
    ),
    f"/{INVENTORY_SERVICE}/Commit": inventory_pb2.CommitRequest(reservation_id=f"res_{'0' * 32}"),
    f"/{INVENTORY_SERVICE}/Release": inventory_pb2.ReleaseRequest(reservation_id=f"res_{'0' * 32}"),
    f"/{PAYMENT_SERVICE}/Charge": payment_pb2.ChargeRequest(
        order_id=ORDER_ID,
        customer_id="mallory",
        request_id="steal-1",
        amount=money_pb2.Money(currency_code="USD", amount_minor=100),
    ),
    f"/{PAYMENT_SERVICE}/VoidCharge": payment_pb2.VoidChargeRequest(
        charge_request_id=f"charge-{ORDER_ID}", order_id=ORDER_ID
    ),
    f"/{PAYMENT_SERVICE}/Refund": payment_pb2.RefundRequest(
        payment_id=f"pay_{'0' * 32}", request_id="refund-1"
    ),
}


def _call(channel: grpc.Channel, path: str, request: Message) -> grpc.StatusCode:
    call: Callable[..., object] = channel.unary_unary(
        path, request_serializer=type(request).SerializeToString, response_deserializer=None
    )
    try:
        call(request, timeout=5)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def _handled(stack: Stack, path: str) -> float:
    """How many calls of ``path`` the backends' servers have started (their RED metrics)."""
    service, method = path.strip("/").split("/")
    c = stack.config
    ports = [
        c.ports[var]
        for var in ("INVENTORY_METRICS_PORT", "PAYMENT_V1_METRICS_PORT", "PAYMENT_V2_METRICS_PORT")
    ]
    return sum(
        metric_sum(port, "grpc_server_started_total", grpc_service=service, grpc_method=method)
        for port in ports
    )


@pytest.fixture(scope="module")
def as_workload(stack: Stack) -> Iterator[Callable[[str], grpc.Channel]]:
    """Channels to the internal listener presenting a given workload's certificate."""
    channels: list[grpc.Channel] = []

    def open_as(workload: str) -> grpc.Channel:
        tls = WorkloadTls.load(stack.config.certs_dir, workload)
        channel = grpc.secure_channel(stack.config.internal_target, tls.channel_credentials())
        channels.append(channel)
        return channel

    yield open_as
    for channel in channels:
        channel.close()


@pytest.mark.parametrize("path", INTERNAL_RPCS)
def test_the_edge_refuses_what_moves_money_or_stock_before_any_backend(
    stack: Stack, edge: grpc.Channel, path: str
) -> None:
    before = _handled(stack, path)
    assert _call(edge, path, INTERNAL_RPCS[path]) == grpc.StatusCode.PERMISSION_DENIED
    assert _handled(stack, path) == before


def test_the_edge_serves_the_public_api(edge: grpc.Channel) -> None:
    orders = order_pb2_grpc.OrderServiceStub(edge)
    order = orders.CreateOrder(
        order_pb2.CreateOrderRequest(
            customer_id="cust-public",
            request_id=f"public-{uuid.uuid4()}",
            lines=[money_pb2.Line(sku="SKU-0003", quantity=1)],
        ),
        timeout=10,
    )
    assert order.status == order_pb2.ORDER_STATUS_CONFIRMED, order.failure_reason
    public: dict[str, Message] = {
        "/mesh.order.v1.OrderService/GetOrder": order_pb2.GetOrderRequest(order_id=order.order_id),
        "/mesh.order.v1.OrderService/ListOrders": order_pb2.ListOrdersRequest(
            customer_id="cust-public"
        ),
        f"/{INVENTORY_SERVICE}/GetItem": inventory_pb2.GetItemRequest(sku="SKU-0003"),
        f"/{INVENTORY_SERVICE}/ListItems": inventory_pb2.ListItemsRequest(page_size=3),
        f"/{PAYMENT_SERVICE}/GetPayment": payment_pb2.GetPaymentRequest(
            payment_id=order.payment_id
        ),
    }
    for path, request in public.items():
        assert _call(edge, path, request) == grpc.StatusCode.OK, path


def test_an_unknown_method_at_the_edge_is_unimplemented(edge: grpc.Channel) -> None:
    assert _call(edge, "/nowhere.v1.Nothing/Do", order_pb2.GetOrderRequest()) == (
        grpc.StatusCode.UNIMPLEMENTED
    )


def test_plaintext_callers_reach_neither_the_internal_listener_nor_a_backend(
    stack: Stack,
) -> None:
    c = stack.config
    targets = [
        c.internal_target,
        *(
            f"127.0.0.1:{c.ports[var]}"
            for var in ("ORDER_PORT", "INVENTORY_PORT", "PAYMENT_V1_PORT", "PAYMENT_V2_PORT")
        ),
    ]
    request = INTERNAL_RPCS[f"/{PAYMENT_SERVICE}/Charge"]
    for target in targets:
        with grpc.insecure_channel(target) as channel:
            assert _call(channel, f"/{PAYMENT_SERVICE}/Charge", request) == (
                grpc.StatusCode.UNAVAILABLE
            ), target


@pytest.mark.parametrize("workload", ["inventory", "payment", "envoy"])
def test_only_the_order_identity_may_move_money_or_stock(
    as_workload: Callable[[str], grpc.Channel], workload: str
) -> None:
    channel = as_workload(workload)
    for path, request in INTERNAL_RPCS.items():
        assert _call(channel, path, request) == grpc.StatusCode.PERMISSION_DENIED, path
    # The same identity may still read the public API inside the mesh.
    get_item = inventory_pb2.GetItemRequest(sku="SKU-0001")
    assert _call(channel, f"/{INVENTORY_SERVICE}/GetItem", get_item) == grpc.StatusCode.OK


def test_the_order_identity_reaches_the_money_paths(
    stack: Stack, as_workload: Callable[[str], grpc.Channel]
) -> None:
    path = f"/{PAYMENT_SERVICE}/Refund"
    before = _handled(stack, path)
    # An unknown payment: the backend itself answers, which proves RBAC let the call through.
    code = _call(as_workload("order"), path, INTERNAL_RPCS[path])
    assert code == grpc.StatusCode.NOT_FOUND
    assert _handled(stack, path) == before + 1


def test_a_backend_refuses_a_mesh_workload_that_bypasses_envoy(stack: Stack) -> None:
    """An order certificate straight at payment would skip RBAC: backends answer only Envoy."""
    order = WorkloadTls.load(stack.config.certs_dir, "order")
    target = f"127.0.0.1:{stack.config.ports['PAYMENT_V1_PORT']}"
    # Certificates name localhost and 127.0.0.1, so no name override is needed.
    with grpc.secure_channel(target, order.channel_credentials()) as channel:
        request = INTERNAL_RPCS[f"/{PAYMENT_SERVICE}/Refund"]
        assert _call(channel, f"/{PAYMENT_SERVICE}/Refund", request) == (
            grpc.StatusCode.PERMISSION_DENIED
        )


def test_with_mtls_off_the_saga_runs_in_plaintext_and_the_edge_still_guards_money(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with (
        running_stack(tmp_path_factory.mktemp("plaintext"), mtls=False) as plain,
        grpc.insecure_channel(plain.config.edge_target) as edge,
    ):
        order = order_pb2_grpc.OrderServiceStub(edge).CreateOrder(
            order_pb2.CreateOrderRequest(
                customer_id="cust-plain",
                request_id=f"plain-{uuid.uuid4()}",
                lines=[money_pb2.Line(sku="SKU-0004", quantity=1)],
            ),
            timeout=10,
        )
        assert order.status == order_pb2.ORDER_STATUS_CONFIRMED, order.failure_reason
        assert not plain.config.certs_dir.exists()
        path = f"/{PAYMENT_SERVICE}/Charge"
        assert _call(edge, path, INTERNAL_RPCS[path]) == grpc.StatusCode.PERMISSION_DENIED
