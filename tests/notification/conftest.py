"""Notification servers started in-process on port 0, on a temporary DATA_DIR and the session's
private redis-server (flushed per test), with short read and claim times."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from prometheus_client import REGISTRY

from mesh.notification.v1 import notification_pb2, notification_pb2_grpc
from meshkit import order_events
from meshkit.ids import new_id
from meshkit.order_events import OrderEvent
from meshkit.server import RunningServer
from meshkit.testing import wait_until
from notification_service.config import Settings
from notification_service.consumers import Process
from notification_service.server import serve
from notification_service.stream import GROUP

#: Small enough that a claim, and so a dead letter after a few deliveries, takes well under a
#: second; large enough that a consumer working normally is never claimed from.
CLAIM_IDLE_MS = 150


def order_event(**overrides: Any) -> OrderEvent:
    """A valid CONFIRMED order event for a fresh order (``status``/``type`` follow each other)."""
    order_id = overrides.pop("order_id", new_id("ord"))
    failed = overrides.pop("failed", False)
    status = order_events.STATUS_FAILED if failed else order_events.STATUS_CONFIRMED
    fields: dict[str, Any] = {
        "event_id": order_events.event_id(order_id, status),
        "type": order_events.ORDER_FAILED if failed else order_events.ORDER_CONFIRMED,
        "order_id": order_id,
        "customer_id": "alice",
        "status": status,
        "reason": "payment declined: card declined (test customer)" if failed else "",
        "total_units": 1999,
        "total_currency": "USD",
        "occurred_at_ms": 1_700_000_000_000,
    }
    fields.update(overrides)
    return OrderEvent(**fields)


def metric(name: str, **labels: str) -> float:
    """A sample of the process-wide registry (the consumers' metrics live there)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Notifications:
    """A running notification server, a stub connected to it and the Redis it consumes."""

    running: RunningServer
    stub: notification_pb2_grpc.NotificationServiceStub
    settings: Settings
    redis: redis.Redis

    def publish(self, event: OrderEvent | dict[str, str]) -> bytes:
        fields = event.to_fields() if isinstance(event, OrderEvent) else event
        entry_id: bytes = self.redis.xadd(order_events.STREAM, fields)  # type: ignore[arg-type]
        return entry_id

    def listed(self, customer_id: str = "alice", **request: Any) -> list[Any]:
        """Every notification of the customer, all pages."""
        found: list[Any] = []
        token = ""
        while True:
            page = self.stub.ListNotifications(
                notification_pb2.ListNotificationsRequest(
                    customer_id=customer_id, page_token=token, **request
                ),
                timeout=5,
            )
            found += page.notifications
            token = page.next_page_token
            if not token:
                return found

    def settled(self) -> bool:
        """Every entry of the stream delivered to the group and acknowledged (or dead)."""
        groups = {g["name"]: g for g in self.redis.xinfo_groups(order_events.STREAM)}
        group = groups.get(GROUP.encode())
        return group is not None and group["lag"] == 0 and group["pending"] == 0

    def wait_settled(self, timeout_s: float = 10) -> None:
        wait_until(self.settled, timeout_s=timeout_s, what="every event acknowledged")


@pytest.fixture
def base_settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        consumers=2,
        # Unique per test: the session's Redis is shared, and names are what a restart reuses.
        consumer_prefix=f"t{uuid.uuid4().hex[:8]}",
        block_ms=50,
        claim_idle_ms=CLAIM_IDLE_MS,
        max_deliveries=3,
    )


Start = Callable[..., Notifications]


@pytest.fixture
def start(base_settings: Settings, redis_url: str) -> Iterator[Start]:
    """Starts a server with settings overrides (``wrap=`` as serve's); stops all at teardown."""
    started: list[tuple[RunningServer, grpc.Channel, redis.Redis]] = []

    def _start(
        *, wrap: Callable[[Process], Process] | None = None, **overrides: Any
    ) -> Notifications:
        settings = replace(base_settings, **overrides)
        running = serve(settings, wrap=wrap)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        client = redis.Redis.from_url(settings.redis_url)
        started.append((running, channel, client))
        stub = notification_pb2_grpc.NotificationServiceStub(channel)
        return Notifications(running, stub, settings, client)

    yield _start
    for running, channel, client in started:
        channel.close()
        running.stop()
        client.close()


@pytest.fixture
def notifications(start: Start) -> Notifications:
    return start()
