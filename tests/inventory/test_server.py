"""The assembled server: health, reflection, restarts, and life without Redis."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inventory.helpers import Inventory, StartInventory, order_id
from inventory_service.servicer import SERVICE_NAME
from mesh.inventory.v1 import inventory_pb2
from meshkit.testing import free_port


def _health(inventory: Inventory, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(inventory.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_is_serving(inventory: Inventory) -> None:
    for service in ("", SERVICE_NAME):
        assert _health(inventory, service) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(inventory: Inventory) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(inventory.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
    names = {service.name for service in response.list_services_response.service}
    assert SERVICE_NAME in names


def test_restart_keeps_stock_and_reservations(start_inventory: StartInventory) -> None:
    first = start_inventory(seed_stock=50)
    oid = order_id()
    reservation = first.reserve(oid, ("SKU-0002", 7))
    first.stop()

    second = start_inventory(seed_stock=50)
    assert second.available("SKU-0002") == 43, "stock kept, and not re-seeded"
    assert second.reserve(oid, ("SKU-0002", 7)) == reservation
    committed = second.stub.Commit(
        inventory_pb2.CommitRequest(reservation_id=reservation.reservation_id), timeout=5
    )
    assert committed.state == inventory_pb2.RESERVATION_STATE_COMMITTED


def test_works_without_redis(start_inventory: StartInventory, tmp_path: Path) -> None:
    inventory = start_inventory(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", data_dir=tmp_path / "no-redis"
    )
    assert inventory.available("SKU-0001") == 100
    rid = inventory.reserve(order_id(), ("SKU-0001", 3)).reservation_id
    assert inventory.available("SKU-0001") == 97
    page = inventory.stub.ListItems(inventory_pb2.ListItemsRequest(page_size=1), timeout=5)
    assert page.items[0].available == 97
    inventory.stub.Release(inventory_pb2.ReleaseRequest(reservation_id=rid), timeout=5)
    assert inventory.available("SKU-0001") == 100
    assert _health(inventory, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
