"""Calls through the Envoy edge, as a user with grpcurl would make them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshctl.registry import INVENTORY_SERVICE, ORDER_SERVICE, PAYMENT_SERVICE
from meshctl.stack import Stack

pytestmark = pytest.mark.stack

MESH_SERVICES = (ORDER_SERVICE, INVENTORY_SERVICE, PAYMENT_SERVICE)


def test_an_order_through_the_edge_is_confirmed_and_moves_stock_and_money(
    edge: grpc.Channel,
) -> None:
    orders = order_pb2_grpc.OrderServiceStub(edge)
    inventory = inventory_pb2_grpc.InventoryServiceStub(edge)
    payments = payment_pb2_grpc.PaymentServiceStub(edge)
    before = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0001"), timeout=5)

    order = orders.CreateOrder(
        order_pb2.CreateOrderRequest(
            customer_id="cust-edge",
            request_id=f"edge-{uuid.uuid4()}",
            lines=[money_pb2.Line(sku="SKU-0001", quantity=2)],
        ),
        timeout=10,
    )

    assert order.status == order_pb2.ORDER_STATUS_CONFIRMED, order.failure_reason
    assert order.total.amount_minor == 2 * before.price.amount_minor
    after = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0001"), timeout=5)
    assert after.available == before.available - 2
    payment = payments.GetPayment(
        payment_pb2.GetPaymentRequest(payment_id=order.payment_id), timeout=5
    )
    assert payment.state == payment_pb2.PAYMENT_STATE_CAPTURED
    assert payment.amount == order.total
    assert orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.order_id), timeout=5) == order


def test_health_through_the_edge_is_serving(edge: grpc.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    response = health_pb2_grpc.HealthStub(edge).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- reflection, the way grpcurl speaks it --------------------------------------------------

REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
REFLECTION_V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


class ReflectionClient:
    """grpcurl's protocol: ask grpc.reflection.v1 first and fall back to v1alpha when the
    server answers UNIMPLEMENTED. The two versions' messages are identical on the wire."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self.method: str | None = None
        self.attempts: list[str] = []

    def ask(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        methods = [self.method] if self.method else [REFLECTION_V1, REFLECTION_V1ALPHA]
        for method in methods:
            self.attempts.append(method)
            call = self._channel.stream_stream(
                method,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            try:
                responses = list(call(iter([request]), timeout=5))
            except grpc.RpcError as error:
                if method == REFLECTION_V1 and error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    continue
                raise
            self.method = method
            yield from responses
            return
        raise AssertionError("no reflection version answered")

    def one(self, **fields: str) -> reflection_pb2.ServerReflectionResponse:
        responses = list(self.ask(reflection_pb2.ServerReflectionRequest(**fields)))
        assert len(responses) == 1
        assert not responses[0].HasField("error_response"), responses[0].error_response
        return responses[0]

    def list_services(self) -> list[str]:
        response = self.one(list_services="")
        return [service.name for service in response.list_services_response.service]

    def describe(self, symbol: str) -> descriptor_pool.DescriptorPool:
        """A pool holding the file that defines ``symbol`` and every file it imports,
        fetched like grpcurl does (file_containing_symbol, then file_by_filename for deps)."""
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._add(files, self.one(file_containing_symbol=symbol))
        missing = _missing_dependencies(files)
        while missing:
            self._add(files, self.one(file_by_filename=missing[0]))
            missing = _missing_dependencies(files)
        pool = descriptor_pool.DescriptorPool()
        for proto in _in_dependency_order(files):
            pool.Add(proto)
        return pool

    @staticmethod
    def _add(
        files: dict[str, descriptor_pb2.FileDescriptorProto],
        response: reflection_pb2.ServerReflectionResponse,
    ) -> None:
        for raw in response.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[proto.name] = proto


def _missing_dependencies(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[str]:
    return sorted({d for f in files.values() for d in f.dependency if d not in files})


def _in_dependency_order(
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> list[descriptor_pb2.FileDescriptorProto]:
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dependency in files[name].dependency:
            visit(dependency)
        ordered.append(files[name])

    for name in sorted(files):
        visit(name)
    return ordered


def test_reflection_through_the_edge_lists_every_mesh_service(edge: grpc.Channel) -> None:
    services = ReflectionClient(edge).list_services()
    assert set(MESH_SERVICES) <= set(services)


@pytest.mark.parametrize(
    ("service", "method", "request_type"),
    [
        (ORDER_SERVICE, "CreateOrder", "mesh.order.v1.CreateOrderRequest"),
        (INVENTORY_SERVICE, "Reserve", "mesh.inventory.v1.ReserveRequest"),
        (PAYMENT_SERVICE, "Charge", "mesh.payment.v1.ChargeRequest"),
    ],
)
def test_reflection_through_the_edge_describes_each_service(
    edge: grpc.Channel, service: str, method: str, request_type: str
) -> None:
    pool = ReflectionClient(edge).describe(service)
    described = pool.FindServiceByName(service)
    rpc = described.methods_by_name[method]
    assert rpc.input_type.full_name == request_type
    # Nested types resolve too: `grpcurl describe` of a request shows its fields' types.
    assert rpc.input_type.fields, f"{request_type} has no fields"


def test_reflection_falls_back_from_v1_to_v1alpha_like_grpcurl(stack: Stack) -> None:
    with grpc.insecure_channel(stack.config.edge_target) as channel:
        client = ReflectionClient(channel)
        assert set(MESH_SERVICES) <= set(client.list_services())
    assert client.attempts[0] == REFLECTION_V1
    # grpcio-reflection serves v1alpha only; through Envoy the v1 attempt is answered
    # UNIMPLEMENTED (not a routing failure), so the fallback lands on v1alpha.
    assert client.method == client.attempts[-1]
    assert client.attempts in ([REFLECTION_V1], [REFLECTION_V1, REFLECTION_V1ALPHA])
