"""A real mesh in-process: inventory, payment and order servers on port 0, the session Redis.

The order service is pointed straight at inventory and payment (INVENTORY_TARGET /
PAYMENT_TARGET); the Envoy path is covered by the stack tests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from inventory_service.config import Settings as InventorySettings
from inventory_service.server import serve as serve_inventory
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from mesh.payment.v1 import payment_pb2_grpc
from meshkit.server import RunningServer
from order_service import metric_names as m
from order_service.config import Settings
from order_service.server import OrderApp, build_app, serve
from payment_service.config import Settings as PaymentSettings
from payment_service.server import serve as serve_payment

SEED_STOCK = 100


@dataclass
class Inventory:
    running: RunningServer
    channel: grpc.Channel
    stub: inventory_pb2_grpc.InventoryServiceStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def available(self, sku: str) -> int:
        item = self.stub.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=5)
        return int(item.available)

    def reserve(self, order_id: str, *lines: tuple[str, int]) -> inventory_pb2.Reservation:
        reservation: inventory_pb2.Reservation = self.stub.Reserve(
            inventory_pb2.ReserveRequest(order_id=order_id, lines=proto_lines(*lines)), timeout=5
        )
        return reservation


@dataclass
class Payments:
    running: RunningServer
    channel: grpc.Channel
    stub: payment_pb2_grpc.PaymentServiceStub
    data_dir: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def states(self, order_id: str) -> list[str]:
        """Every payment row for an order (there is no ListPayments RPC), read from the file."""
        with sqlite3.connect(self.data_dir / "payment.db") as conn:
            rows = conn.execute(
                "SELECT state FROM payments WHERE order_id = ? ORDER BY created_at", (order_id,)
            ).fetchall()
        conn.close()
        return [state for (state,) in rows]


@dataclass
class Order:
    settings: Settings
    running: RunningServer
    channel: grpc.Channel
    stub: order_pb2_grpc.OrderServiceStub
    stopped: bool = field(default=False)

    def create(
        self, customer_id: str, *lines: tuple[str, int], request_id: str, timeout: float = 15
    ) -> order_pb2.Order:
        order: order_pb2.Order = self.stub.CreateOrder(
            order_pb2.CreateOrderRequest(
                customer_id=customer_id, lines=proto_lines(*lines), request_id=request_id
            ),
            timeout=timeout,
        )
        return order

    def get(self, order_id: str) -> order_pb2.Order:
        order: order_pb2.Order = self.stub.GetOrder(
            order_pb2.GetOrderRequest(order_id=order_id), timeout=5
        )
        return order

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.channel.close()
            self.running.stop()


def proto_lines(*lines: tuple[str, int]) -> list[money_pb2.Line]:
    return [money_pb2.Line(sku=sku, quantity=quantity) for sku, quantity in lines]


def outcome_counts() -> dict[tuple[str, str], float]:
    """This process's order_saga_outcomes_total, by (outcome, reason)."""
    return {
        (sample.labels[m.OUTCOME], sample.labels[m.REASON]): sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == m.SAGA_OUTCOMES
    }


def counted_since(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """The series that moved since ``before`` (an :func:`outcome_counts`), by how much."""
    now = outcome_counts()
    return {key: now[key] - before.get(key, 0) for key in now if now[key] != before.get(key, 0)}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def inventory(data_dir: Path, redis_url: str) -> Iterator[Inventory]:
    running = serve_inventory(
        InventorySettings(
            port=0,
            metrics_port=None,
            data_dir=data_dir,
            redis_url=redis_url,
            seed_stock=SEED_STOCK,
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield Inventory(running, channel, inventory_pb2_grpc.InventoryServiceStub(channel))
    channel.close()
    running.stop()


StartPayments = Callable[..., Payments]


@pytest.fixture
def start_payments(data_dir: Path) -> Iterator[StartPayments]:
    """Starts payment servers (PaymentSettings overrides, e.g. fault_rate=1.0)."""
    started: list[Payments] = []

    def start(**overrides: Any) -> Payments:
        options: dict[str, Any] = {"port": 0, "metrics_port": None, "data_dir": data_dir}
        settings = PaymentSettings(**{**options, **overrides})
        running = serve_payment(settings)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        payments = Payments(
            running, channel, payment_pb2_grpc.PaymentServiceStub(channel), data_dir
        )
        started.append(payments)
        return payments

    yield start
    for payments in started:
        payments.channel.close()
        payments.running.stop()


@pytest.fixture
def payments(start_payments: StartPayments) -> Payments:
    return start_payments()


@pytest.fixture
def order_env(
    data_dir: Path, redis_url: str, inventory: Inventory, payments: Payments
) -> dict[str, str]:
    """The environment an order process would get, pointing straight at the two services."""
    return {
        # Straight to the services' own plaintext ports; mTLS is tested through the stack.
        "MESH_MTLS": "0",
        "ORDER_PORT": "0",
        "ORDER_METRICS_PORT": "0",
        "DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "INVENTORY_TARGET": inventory.target,
        "PAYMENT_TARGET": payments.target,
        # Recovery is driven explicitly by the tests (run_once), except the start-up pass.
        "ORDER_RECOVERY_INTERVAL_S": "3600",
        "ORDER_RECOVERY_AGE_S": "0",
    }


StartOrder = Callable[..., Order]


@pytest.fixture
def start_order(order_env: dict[str, str]) -> Iterator[StartOrder]:
    """Starts order servers from ``order_env`` plus overrides; stops them at teardown."""
    started: list[Order] = []

    def start(*, metrics: bool = False, **env: str) -> Order:
        settings = Settings.from_env({**order_env, **env})
        if not metrics:  # stopping /metrics costs 0.5 s (http.server's poll interval)
            settings = replace(settings, metrics_port=None)
        running = serve(settings)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        order = Order(settings, running, channel, order_pb2_grpc.OrderServiceStub(channel))
        started.append(order)
        return order

    yield start
    for order in reversed(started):
        order.stop()


@pytest.fixture
def order(start_order: StartOrder) -> Order:
    return start_order()


@pytest.fixture
def app(order_env: dict[str, str]) -> Iterator[OrderApp]:
    """The order service's parts without a server or recovery thread: store, saga, recovery."""
    built = build_app(Settings.from_env(order_env))
    yield built
    built.close()
