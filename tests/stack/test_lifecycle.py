"""A restarted service keeps its data."""

from __future__ import annotations

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshctl.pidrecord import pid_alive
from meshctl.stack import Stack
from meshkit.ids import new_id

pytestmark = pytest.mark.stack


def test_a_restarted_inventory_keeps_its_reservations_and_stock(
    stack: Stack, as_order: grpc.Channel
) -> None:
    inventory = inventory_pb2_grpc.InventoryServiceStub(as_order)
    request = inventory_pb2.ReserveRequest(
        order_id=new_id("ord"), lines=[money_pb2.Line(sku="SKU-0002", quantity=3)]
    )
    reservation = inventory.Reserve(request, timeout=5)
    stock = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0002"), timeout=5).available
    old_pid = stack.supervisor.pids()["inventory"]

    stack.restart("inventory")

    assert stack.supervisor.pids()["inventory"] != old_pid
    assert not pid_alive(old_pid)
    # Reserve is idempotent by order_id and never reads the cache: the same reservation
    # coming back proves it was on disk.
    assert inventory.Reserve(request, timeout=5) == reservation
    after = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0002"), timeout=5)
    assert after.available == stock
