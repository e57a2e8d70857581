"""Starts the notification service: its read API, and the consumers of the order events."""

from __future__ import annotations

from collections.abc import Callable

import redis

from mesh.notification.v1 import notification_pb2_grpc
from meshkit.redis_client import connect_unretried
from meshkit.server import RunningServer, ServerOptions, build_server

from .config import Settings
from .consumers import ConsumerGroup, ConsumerOptions, Process, StoreNotifications
from .domain import DeliveryPolicy
from .metrics import consumer_metrics
from .servicer import SERVICE_NAME, NotificationServicer
from .store import NotificationStore
from .stream import EventStream

#: How much longer than a blocked read a socket read may take before it counts as failed.
READ_SLACK_S = 1.0


def stream_client(url: str, block_ms: int) -> redis.Redis:
    """The consumers' client: a blocked XREADGROUP holds its socket for up to ``block_ms``,
    past meshkit.redis_client's 0.5 s timeout. No retries inside redis-py: the consumers back
    off themselves, and a read sent again could leave entries delivered to the first one
    (they would wait for a claim)."""
    return connect_unretried(url, timeout_s=block_ms / 1000 + READ_SLACK_S)


def consumer_options(settings: Settings) -> ConsumerOptions:
    return ConsumerOptions(
        count=settings.batch,
        block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms,
        policy=DeliveryPolicy(max_deliveries=settings.max_deliveries),
    )


def serve(settings: Settings, *, wrap: Callable[[Process], Process] | None = None) -> RunningServer:
    """Opens the database, starts serving, then starts the consumers; ``wrap`` gets the step
    that stores a notification and returns the one the consumers run (tests watch it, or
    make it fail).

    Health is SQLite only: ListNotifications answers from SQLite while Redis is away, and the
    consumers wait for Redis on their own.
    """
    store = NotificationStore(settings.db_path)
    client = stream_client(settings.redis_url, settings.block_ms)
    process: Process = StoreNotifications(store)
    group = ConsumerGroup(
        EventStream(client),
        settings.consumer_names(),
        process if wrap is None else wrap(process),
        options=consumer_options(settings),
        metrics=consumer_metrics(),
        together=store.together,
    )
    servicer = NotificationServicer(store)
    running = build_server(
        ServerOptions.of(settings),
        service_names=[SERVICE_NAME],
        registrations=[
            lambda server: notification_pb2_grpc.add_NotificationServiceServicer_to_server(
                servicer, server
            )
        ],
        checks={"sqlite": store.ping},
    )
    group.start()
    running.on_stop += [group.stop, client.close, store.close]
    return running
