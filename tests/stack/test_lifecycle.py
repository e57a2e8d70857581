"""Restarts keep data; `make up` twice is harmless; `make down` leaves no process behind."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshkit.ids import new_id
from meshkit.stack import (
    PORT_VARS,
    PROGRAMS,
    RECORDER_PROGRAM,
    REDIS_PROGRAM,
    Stack,
    StackConfig,
    main,
    pid_alive,
)
from meshkit.testing import free_ports

from .conftest import assert_all_gone

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
    old_pid = stack.pids()["inventory"]

    stack.restart("inventory")

    assert stack.pids()["inventory"] != old_pid
    assert not pid_alive(old_pid)
    # Reserve is idempotent by order_id and never reads the cache: the same reservation
    # coming back proves it was on disk.
    assert inventory.Reserve(request, timeout=5) == reservation
    after = inventory.GetItem(inventory_pb2.GetItemRequest(sku="SKU-0002"), timeout=5)
    assert after.available == stock


def test_make_up_starts_its_own_redis_when_none_answers_and_make_down_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI path of `make up|status|down`, configured only by environment variables."""
    *service_ports, redis_port = free_ports(len(PORT_VARS) + 1)
    env = {var: str(port) for (var, _), port in zip(PORT_VARS.values(), service_ports, strict=True)}
    env["MESH_VAR_DIR"] = str(tmp_path)
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    stack = Stack(StackConfig.from_env(env))
    try:
        # Nothing listens at REDIS_URL, so `up` runs redis-server under supervisord too.
        assert main(["up"], env) == 0
        assert "started by the stack" in capsys.readouterr().out
        pids = stack.pids()
        assert set(pids) == {
            "supervisord",
            RECORDER_PROGRAM,
            REDIS_PROGRAM,
            *(p.name for p in PROGRAMS),
        }

        assert main(["up"], env) == 0  # a second `make up` reports and changes nothing
        assert "already running" in capsys.readouterr().out
        assert stack.pids() == pids

        assert main(["status"], env) == 0
        status = capsys.readouterr().out
        for name in (RECORDER_PROGRAM, REDIS_PROGRAM, *(p.name for p in PROGRAMS)):
            assert re.search(rf"^  {name} +RUNNING +{pids[name]}  SERVING$", status, re.M), status

        assert main(["logs"], {**env, "LINES": "5"}) == 0
        logs = capsys.readouterr().out
        assert f"==> {tmp_path / 'log' / 'order.log'} <==" in logs
        assert f"==> {tmp_path / 'log' / 'redis.log'} <==" in logs
    finally:
        pids = stack.pids() if stack.is_running() else {}
        assert main(["down"], env) == 0
    assert_all_gone(pids)
    assert main(["status"], env) == 0
    assert "not running" in capsys.readouterr().out
    assert main(["down"], env) == 0  # a second `make down` is harmless too
