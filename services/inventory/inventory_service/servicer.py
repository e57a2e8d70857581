"""InventoryService over gRPC: protobuf in, validated domain values to the store, protobuf out."""

from __future__ import annotations

from typing import Protocol

import grpc

from inventory_service import domain
from inventory_service.domain import CURRENCY, Item, PageQuery, Reservation, ReservationState
from inventory_service.store import InventoryStore
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from meshkit.errors import NotFound
from meshkit.limits import MAX_LINES

SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name

_STATES = {
    ReservationState.RESERVED: inventory_pb2.RESERVATION_STATE_RESERVED,
    ReservationState.COMMITTED: inventory_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: inventory_pb2.RESERVATION_STATE_RELEASED,
}


def _money(amount_minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=CURRENCY, amount_minor=amount_minor)


def item_to_proto(item: Item) -> inventory_pb2.Item:
    return inventory_pb2.Item(
        sku=item.sku, name=item.name, price=_money(item.price_minor), available=item.available
    )


def reservation_to_proto(reservation: Reservation) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(
        reservation_id=reservation.reservation_id,
        order_id=reservation.order_id,
        state=_STATES[reservation.state],
        lines=[
            inventory_pb2.ReservedLine(
                sku=line.sku, quantity=line.quantity, unit_price=_money(line.unit_price_minor)
            )
            for line in reservation.lines
        ],
        total=_money(reservation.total_minor),
    )


class ItemReads(Protocol):
    """Where GetItem and ListItems read: the cache, or the store itself."""

    def get_item(self, sku: str) -> Item | None: ...

    def list_items(self, query: PageQuery) -> tuple[list[Item], bool]: ...


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore, reads: ItemReads | None = None) -> None:
        self._store = store
        self._reads: ItemReads = reads or store

    def GetItem(  # noqa: N802  the generated servicer's method name
        self, request: inventory_pb2.GetItemRequest, context: grpc.ServicerContext
    ) -> inventory_pb2.Item:
        sku = domain.parse_sku(request.sku)
        item = self._reads.get_item(sku)
        if item is None:
            raise NotFound(f"item {sku} not found")
        return item_to_proto(item)

    def ListItems(  # noqa: N802  the generated servicer's method name
        self, request: inventory_pb2.ListItemsRequest, context: grpc.ServicerContext
    ) -> inventory_pb2.ListItemsResponse:
        query = domain.parse_page(request.page_size, request.page_token)
        items, more = self._reads.list_items(query)
        return inventory_pb2.ListItemsResponse(
            items=[item_to_proto(item) for item in items],
            next_page_token=domain.next_page_token(items[-1].sku) if more and items else "",
        )

    def Reserve(  # noqa: N802  the generated servicer's method name
        self, request: inventory_pb2.ReserveRequest, context: grpc.ServicerContext
    ) -> inventory_pb2.Reservation:
        command = domain.parse_reserve(
            request.order_id,
            # One line past the limit is enough to refuse; the rest are never looked at.
            [(line.sku, line.quantity) for line in request.lines[: MAX_LINES + 1]],
        )
        return reservation_to_proto(self._store.reserve(command))

    def Commit(  # noqa: N802  the generated servicer's method name
        self, request: inventory_pb2.CommitRequest, context: grpc.ServicerContext
    ) -> inventory_pb2.Reservation:
        reservation_id = domain.parse_reservation_id(request.reservation_id)
        return reservation_to_proto(self._store.commit(reservation_id))

    def Release(  # noqa: N802  the generated servicer's method name
        self, request: inventory_pb2.ReleaseRequest, context: grpc.ServicerContext
    ) -> inventory_pb2.Reservation:
        reservation_id = domain.parse_reservation_id(request.reservation_id)
        return reservation_to_proto(self._store.release(reservation_id))
