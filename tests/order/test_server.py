"""The served process: health, restart keeping orders, start-up recovery, metrics."""

from __future__ import annotations

import urllib.request

from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh.order.v1 import order_pb2
from meshkit.testing import is_serving, wait_until
from order_service.domain import new_order, validate_create
from order_service.server import REFLECTION_NAMES, SERVICE_NAME, OrderApp

from .conftest import SEED_STOCK, Inventory, StartOrder


def test_serves_health_for_the_service_when_sqlite_and_redis_answer(
    start_order: StartOrder,
) -> None:
    order = start_order()
    target = f"127.0.0.1:{order.running.port}"
    assert is_serving(target)
    assert is_serving(target, SERVICE_NAME)
    assert order.running.probe.probe_once() == {}


def test_reflection_lists_the_whole_mesh_and_describes_each_service(
    start_order: StartOrder,
) -> None:
    order = start_order()
    stub = reflection_pb2_grpc.ServerReflectionStub(order.channel)

    def ask(**fields: str) -> reflection_pb2.ServerReflectionResponse:
        request = reflection_pb2.ServerReflectionRequest(**fields)
        return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))

    listed = {s.name for s in ask(list_services="").list_services_response.service}
    assert set(REFLECTION_NAMES) <= listed
    for name in REFLECTION_NAMES:
        files = ask(file_containing_symbol=name).file_descriptor_response.file_descriptor_proto
        assert files, f"no descriptor for {name}"


def test_metrics_count_handled_calls(start_order: StartOrder) -> None:
    order = start_order(metrics=True)
    order.stub.ListOrders(order_pb2.ListOrdersRequest(), timeout=5)
    url = f"http://127.0.0.1:{order.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:  # our own endpoint
        body = response.read().decode()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="ListOrders"' in body


def test_a_restart_keeps_orders(start_order: StartOrder) -> None:
    first = start_order()
    placed = first.create("cust-1", ("SKU-0013", 1), request_id="keep-1")
    first.stop()

    second = start_order()
    assert second.get(placed.order_id) == placed
    # The request_id still maps to that order: no second saga after a restart.
    assert second.create("cust-1", ("SKU-0013", 1), request_id="keep-1") == placed


def test_start_up_finishes_orders_a_crash_left_pending(
    app: OrderApp, start_order: StartOrder, inventory: Inventory
) -> None:
    request = validate_create("cust-1", [("SKU-0014", 3)], "crashed-1")
    left = app.store.insert(new_order("ord_" + "1" * 32, request), fence=1)

    order = start_order()
    wait_until(
        lambda: order.get(left.order_id).status != order_pb2.ORDER_STATUS_PENDING,
        timeout_s=10,
        what="the start-up recovery pass",
    )
    assert order.get(left.order_id).status == order_pb2.ORDER_STATUS_CONFIRMED
    assert inventory.available("SKU-0014") == SEED_STOCK - 3
