"""Restarts keep data; `make up` twice is harmless; `make down` leaves no process behind."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshkit.ids import new_id
from meshkit.stack import REDIS_PROGRAM, Stack, pid_alive
from meshkit.testing import free_port

from .conftest import assert_all_gone, stack_config

pytestmark = pytest.mark.stack


def test_a_restarted_inventory_keeps_its_reservations_and_stock(
    stack: Stack, edge: grpc.Channel
) -> None:
    inventory = inventory_pb2_grpc.InventoryServiceStub(edge)
    request = inventory_pb2.ReserveRequest(
        order_id=new_id("ord"), lines=[money_pb2.Line(sku="SKU-0002", quantity=3)]
    )
    reservation = inventory.Reserve(request, timeout=5)
    stock = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0002"), timeout=5).available
    old_pid = stack.pids()["inventory"]

    stack.restart("inventory")

    assert stack.pids()["inventory"] != old_pid
    assert not pid_alive(old_pid)
    # Reserve is idempotent by order_id and never reads the cache: the same reservation
    # coming back proves it was on disk.
    assert inventory.Reserve(request, timeout=5) == reservation
    after = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0002"), timeout=5)
    assert after.available == stock


def test_up_starts_its_own_redis_when_none_answers_and_down_leaves_nothing(
    tmp_path: Path,
) -> None:
    # Nothing listens on this port, so the stack must start redis-server itself.
    config = stack_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    out = io.StringIO()
    stack = Stack(config, out=out)
    try:
        stack.up()
        pids = stack.pids()
        assert set(pids) == {
            "supervisord",
            REDIS_PROGRAM,
            "catalog",
            "inventory",
            "payment_v1",
            "payment_v2",
            "order",
            "envoy",
        }
        assert all(status.ok for status in stack.status())
        assert "started by the stack" in out.getvalue()

        stack.up()  # a second `make up` reports and changes nothing
        assert "already running" in out.getvalue()
        assert stack.pids() == pids
    finally:
        pids = stack.pids() if stack.is_running() else {}
        stack.down()
    assert_all_gone(pids)
    assert not stack.is_running()
    assert stack.status() == []
    stack.down()  # a second `make down` is harmless too
    assert "not running" in out.getvalue()
