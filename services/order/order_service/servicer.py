"""OrderService over gRPC: protobuf in, domain values to :class:`Orders`, protobuf out."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

import resilience
from mesh.common.v1 import money_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from meshkit.limits import MAX_LINES
from order_service import domain
from order_service.domain import Order, Status
from order_service.orders import Orders

#: Leaves a duplicate time to answer before its caller's deadline passes.
ANSWER_MARGIN_S = 0.1

_STATUS = {
    Status.PENDING: order_pb2.ORDER_STATUS_PENDING,
    Status.CONFIRMED: order_pb2.ORDER_STATUS_CONFIRMED,
    Status.FAILED: order_pb2.ORDER_STATUS_FAILED,
}


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: Orders, max_wait_s: float) -> None:
        self._orders = orders
        self._max_wait_s = max_wait_s

    def CreateOrder(  # noqa: N802  # method names come from the proto
        self, request: order_pb2.CreateOrderRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        new = domain.validate_create(
            request.customer_id,
            # One line past the limit is enough to refuse; the rest are never looked at.
            [(line.sku, line.quantity) for line in request.lines[: MAX_LINES + 1]],
            request.request_id,
        )
        return self._answer(self._orders.create(new, wait_budget(self._max_wait_s)))

    def GetOrder(  # noqa: N802  # method names come from the proto
        self, request: order_pb2.GetOrderRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        return self._answer(self._orders.get(request.order_id))

    def ListOrders(  # noqa: N802  # method names come from the proto
        self, request: order_pb2.ListOrdersRequest, context: grpc.ServicerContext
    ) -> order_pb2.ListOrdersResponse:
        orders, token = self._orders.list(
            customer_id=request.customer_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        attention = self._orders.attention(orders)
        return order_pb2.ListOrdersResponse(
            orders=[to_proto(order, attention.get(order.order_id, "")) for order in orders],
            next_page_token=token,
        )

    def _answer(self, order: Order) -> order_pb2.Order:
        return to_proto(order, self._orders.attention([order]).get(order.order_id, ""))


def wait_budget(cap_s: float) -> float:
    """How long a duplicate may wait: the caller's remaining deadline, less time to answer, capped.

    The deadline is the one the resilience library's server interceptor captured for this
    call, the same one that caps the saga's outbound calls.
    """
    remaining = resilience.remaining_time()
    if remaining is None:
        return cap_s
    return max(0.0, min(remaining - ANSWER_MARGIN_S, cap_s))


def to_proto(order: Order, attention_reason: str = "") -> order_pb2.Order:
    message = order_pb2.Order(
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=[money_pb2.Line(sku=line.sku, quantity=line.quantity) for line in order.lines],
        status=_STATUS[order.status],
        # The reason a PENDING order is compensating for becomes visible once it has FAILED.
        failure_reason=order.failure_reason if order.status is Status.FAILED else "",
        payment_id=order.payment_id,
        reservation_id=order.reservation_id,
        request_id=order.request_id,
        create_time=_timestamp(order.create_time_us),
        update_time=_timestamp(order.update_time_us),
        attention_reason=attention_reason,
    )
    if order.total is not None:
        message.total.CopyFrom(
            money_pb2.Money(
                currency_code=order.total.currency_code, amount_minor=order.total.amount_minor
            )
        )
    return message


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp
