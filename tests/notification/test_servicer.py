"""ListNotifications over a real server: pages newest first, per customer, and INVALID_ARGUMENT
naming the field for every bad request; health and reflection as every service has them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh.notification.v1 import notification_pb2
from meshkit.limits import MAX_PAGE_SIZE
from meshkit.testing import field_violations
from notification_service.servicer import SERVICE_NAME

from .conftest import Notifications, order_event


def _refused(notifications: Notifications, **request: Any) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as raised:
        notifications.stub.ListNotifications(
            notification_pb2.ListNotificationsRequest(**request), timeout=5
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    return field_violations(raised.value)


def test_pages_are_newest_first_and_hold_only_that_customers_notifications(
    notifications: Notifications,
) -> None:
    events = [order_event(occurred_at_ms=1_700_000_000_000 + n) for n in range(5)]
    for event in events:
        notifications.publish(event)
    notifications.publish(order_event(customer_id="bob"))
    notifications.wait_settled()

    pages = []
    token = ""
    while True:
        page = notifications.stub.ListNotifications(
            notification_pb2.ListNotificationsRequest(
                customer_id="alice", page_size=2, page_token=token
            ),
            timeout=5,
        )
        pages.append([n.order_id for n in page.notifications])
        token = page.next_page_token
        if not token:
            break

    newest_first = [e.order_id for e in reversed(events)]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
    assert [n.customer_id for n in notifications.listed("bob")] == ["bob"]
    assert notifications.listed("nobody") == []


@pytest.mark.parametrize("page_size", [-1, MAX_PAGE_SIZE + 1])
def test_a_page_size_out_of_bounds_is_invalid(notifications: Notifications, page_size: int) -> None:
    found = _refused(notifications, customer_id="alice", page_size=page_size)
    assert list(found) == ["page_size"]


@pytest.mark.parametrize("customer_id", ["", "has space", "x" * 65])
def test_a_missing_or_malformed_customer_id_is_invalid(
    notifications: Notifications, customer_id: str
) -> None:
    assert list(_refused(notifications, customer_id=customer_id)) == ["customer_id"]


def test_a_page_token_not_issued_or_for_another_customer_is_invalid(
    notifications: Notifications,
) -> None:
    for n in range(3):
        notifications.publish(order_event(occurred_at_ms=n))
    notifications.wait_settled()
    first = notifications.stub.ListNotifications(
        notification_pb2.ListNotificationsRequest(customer_id="alice", page_size=1), timeout=5
    )
    assert first.next_page_token

    assert list(_refused(notifications, customer_id="alice", page_token="garbage!")) == [
        "page_token"
    ]
    found = _refused(notifications, customer_id="bob", page_token=first.next_page_token)
    assert "different filters" in found["page_token"]
    both = _refused(notifications, customer_id="", page_size=-5, page_token="%%")
    assert set(both) == {"customer_id", "page_size", "page_token"}


def test_health_and_reflection_name_the_service(notifications: Notifications) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{notifications.running.port}")
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = reflection.ServerReflectionInfo(iter([request]), timeout=5)
    assert SERVICE_NAME in {s.name for s in response.list_services_response.service}
    channel.close()
