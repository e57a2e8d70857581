"""Wires the order service together and serves it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc
import redis

from mesh.inventory.v1 import inventory_pb2
from mesh.notification.v1 import notification_pb2
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2
from meshkit.admission import ConcurrencyLimitInterceptor
from meshkit.redis_client import connect
from meshkit.server import RunningServer, ServerOptions, build_server, resilience_metrics
from meshkit.sqlite import Database
from order_service.claims import Claims
from order_service.clients import GrpcInventory, GrpcPayments, open_lanes
from order_service.config import Settings
from order_service.leases import Leases
from order_service.metrics import (
    create_duration_interceptor,
    needs_attention,
    outbox_metrics,
    rate_limit_decisions,
    saga_outcomes,
)
from order_service.orders import Orders
from order_service.outbox import Relay
from order_service.ratelimit import rate_limit
from order_service.recovery import Recovery
from order_service.saga import Saga
from order_service.servicer import OrderServicer
from order_service.store import MIGRATIONS, SCHEMA, OrderStore
from order_service.stuck import StuckOrders

SERVICE_NAME = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
CREATE_ORDER = f"/{SERVICE_NAME}/CreateOrder"
#: What this server's reflection lists: the whole mesh's API. A reflection stream has one path
#: for every service, so Envoy sends the edge's to one backend, this one, which holds every
#: service's descriptors already (it calls inventory and payment; notification's are linked in
#: for this list alone).
REFLECTION_NAMES = (
    SERVICE_NAME,
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name,
    payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,
    notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
)


@dataclass(slots=True, kw_only=True)
class OrderApp:
    """Everything the service is made of, without the gRPC server (tests drive parts directly)."""

    settings: Settings
    db: Database
    redis: redis.Redis
    channels: tuple[grpc.Channel, ...]
    store: OrderStore
    claims: Claims
    leases: Leases
    saga: Saga
    stuck: StuckOrders
    orders: Orders
    recovery: Recovery
    #: None when events are off (ORDER_EVENTS_MAXLEN=0).
    relay: Relay | None

    def ping_redis(self) -> None:
        self.redis.ping()

    def start(self) -> None:
        """Starts the background work: recovery and the outbox relay."""
        self.recovery.start()
        if self.relay is not None:
            self.relay.start()

    def close(self) -> None:
        self.recovery.stop()
        if self.relay is not None:
            self.relay.stop()
        self.leases.close()
        for channel in self.channels:
            channel.close()
        self.redis.close()


def build_app(settings: Settings) -> OrderApp:
    db = Database(settings.db_path, SCHEMA, MIGRATIONS)
    client = connect(settings.redis_url)
    listeners = [resilience_metrics()]
    credentials = None if settings.tls is None else settings.tls.channel_credentials()
    inventory = open_lanes(
        settings.inventory_target,
        target="inventory",
        policy=settings.policy,
        credentials=credentials,
        listeners=listeners,
    )
    payment = open_lanes(
        settings.payment_target,
        target="payment",
        policy=settings.policy,
        credentials=credentials,
        listeners=listeners,
    )
    wakeup = threading.Event()
    store = OrderStore(db, events=settings.events, on_event=wakeup.set)
    claims = Claims(client)
    leases = Leases(client, settings.lease_ms)
    saga = Saga(
        store,
        GrpcInventory(inventory, settings.call_timeout_s),
        GrpcPayments(payment, settings.call_timeout_s),
    )
    stuck = StuckOrders(store, settings.retry_policy)
    outcomes = saga_outcomes()
    return OrderApp(
        settings=settings,
        db=db,
        redis=client,
        channels=(inventory.connection, payment.connection),
        store=store,
        claims=claims,
        leases=leases,
        saga=saga,
        stuck=stuck,
        orders=Orders(
            store,
            claims,
            leases,
            saga,
            stuck,
            rate_limit=rate_limit(settings.rate_limit, on_outcome=rate_limit_decisions().record),
            on_outcome=outcomes.record,
        ),
        recovery=Recovery(
            store,
            leases,
            saga,
            stuck,
            interval_s=settings.recovery_interval_s,
            age_s=settings.recovery_age_s,
            workers=settings.recovery_workers,
            on_outcome=outcomes.record,
            on_attention=needs_attention().set,
        ),
        relay=Relay(
            store,
            client,
            wakeup,
            maxlen=settings.events_maxlen,
            poll_s=settings.outbox_poll_s,
            listener=outbox_metrics(),
        )
        if settings.events
        else None,
    )


def serve(settings: Settings) -> RunningServer:
    """Starts the server, the recovery loop and the outbox relay; ``RunningServer.stop()``
    stops them all."""
    app = build_app(settings)
    servicer = OrderServicer(app.orders, settings.duplicate_wait_s)
    running = build_server(
        ServerOptions.of(settings),
        service_names=[SERVICE_NAME],
        reflection_names=REFLECTION_NAMES,
        registrations=[lambda s: order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, s)],
        checks={"sqlite": app.db.ping, "redis": app.ping_redis},
        interceptors=[
            create_duration_interceptor(CREATE_ORDER),
            ConcurrencyLimitInterceptor({CREATE_ORDER: settings.create_max_in_flight}),
        ],
    )
    app.start()
    running.on_stop.append(app.close)
    return running
