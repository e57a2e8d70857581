"""Fixtures: a real inventory server on port 0 with a temporary data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from inventory.helpers import Inventory, StartInventory
from inventory_service.config import Settings
from inventory_service.server import serve
from mesh.inventory.v1 import inventory_pb2_grpc


@pytest.fixture
def start_inventory(tmp_path: Path, redis_url: str) -> Iterator[StartInventory]:
    """Starts inventory servers (stopped at teardown); defaults: the session Redis, tmp data."""
    started: list[Inventory] = []

    def start(**overrides: Any) -> Inventory:
        options: dict[str, Any] = {
            "port": 0,
            "metrics_port": None,
            "data_dir": tmp_path / "data",
            "redis_url": redis_url,
            # A slow reply on a busy test machine would skip the cache the tests look at.
            "cache_redis_timeout_ms": 2000,
        }
        options.update(overrides)
        settings = Settings(**options)
        running = serve(settings)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        inventory = Inventory(
            settings, running, channel, inventory_pb2_grpc.InventoryServiceStub(channel)
        )
        started.append(inventory)
        return inventory

    yield start
    for inventory in reversed(started):
        inventory.stop()


@pytest.fixture
def inventory(start_inventory: StartInventory) -> Inventory:
    return start_inventory()


@pytest.fixture
def stub(inventory: Inventory) -> inventory_pb2_grpc.InventoryServiceStub:
    return inventory.stub
