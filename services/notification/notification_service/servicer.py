"""NotificationService over gRPC: protobuf in, domain rules and the store, protobuf out."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.common.v1 import money_pb2
from mesh.notification.v1 import notification_pb2, notification_pb2_grpc
from mesh.order.v1 import order_pb2

from . import domain
from .domain import Notification
from .store import NotificationStore

SERVICE_NAME = notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name


def _timestamp(millis: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(millis)
    return stamp


def to_proto(item: Notification) -> notification_pb2.Notification:
    total = (
        None
        if item.total_units is None or item.total_currency is None
        else money_pb2.Money(currency_code=item.total_currency, amount_minor=item.total_units)
    )
    return notification_pb2.Notification(
        notification_id=item.notification_id,
        event_id=item.event_id,
        order_id=item.order_id,
        customer_id=item.customer_id,
        # Stored events passed OrderEvent's checks, so the name is one of the enum's.
        status=order_pb2.OrderStatus.Value(item.status),
        reason=item.reason,
        total=total,
        message=item.message,
        event_time=_timestamp(item.occurred_at_ms),
        create_time=_timestamp(item.stored_at_ms),
    )


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, store: NotificationStore) -> None:
        self._store = store

    def ListNotifications(  # noqa: N802  # gRPC method names come from the proto
        self, request: notification_pb2.ListNotificationsRequest, context: grpc.ServicerContext
    ) -> notification_pb2.ListNotificationsResponse:
        query = domain.page_query(request.customer_id, request.page_size, request.page_token)
        page = self._store.page(query)
        return notification_pb2.ListNotificationsResponse(
            notifications=[to_proto(item) for item in page[: query.size]],
            next_page_token=domain.next_page_token(query, page),
        )
