"""Helpers for inventory tests: a started server and request/response shortcuts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from inventory_service.config import Settings
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshkit.ids import new_id
from meshkit.server import RunningServer


@dataclass
class Inventory:
    settings: Settings
    running: RunningServer
    channel: grpc.Channel
    stub: inventory_pb2_grpc.InventoryServiceStub
    stopped: bool = field(default=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.channel.close()
            self.running.stop()

    def available(self, sku: str) -> int:
        return int(self.stub.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=5).available)

    def reserve(self, order_id: str, *lines: tuple[str, int]) -> inventory_pb2.Reservation:
        reservation: inventory_pb2.Reservation = self.stub.Reserve(
            reserve_request(order_id, *lines), timeout=5
        )
        return reservation


StartInventory = Callable[..., Inventory]


def reserve_request(order_id: str, *lines: tuple[str, int]) -> inventory_pb2.ReserveRequest:
    return inventory_pb2.ReserveRequest(
        order_id=order_id,
        lines=[money_pb2.Line(sku=sku, quantity=quantity) for sku, quantity in lines],
    )


def order_id() -> str:
    return new_id("ord")


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The field paths of an INVALID_ARGUMENT's google.rpc.BadRequest detail."""
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT carries a google.rpc.Status"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [violation.field for violation in bad_request.field_violations]


def rpc_error(call: Callable[..., object], request: object) -> grpc.RpcError:
    """The error a call fails with; fails the test if it succeeds."""
    try:
        call(request, timeout=5)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"expected an error from {request!r}")
