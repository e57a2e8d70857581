"""Shoppers for ``make load``: each browses the catalog, places orders and reads them back,
through the edge, every call one entry in Locust's statistics.

Orders come in three kinds: a new order (a fresh request_id, expected CONFIRMED), a duplicate
retry (the same request_id sent again, expected to answer with the same order), and a declined
customer's (a customer id starting ``decline``, which payment always declines: expected FAILED
with the decline as its reason). Each user spreads its orders over ``CUSTOMERS_PER_USER``
customer ids, so the per-customer rate limit (ORDER_RATE_PER_S, 10/s by default) refuses none
at a normal pace; a refusal (RESOURCE_EXHAUSTED) is a failure in the statistics, and its
pushback is waited out.

Run by ``python -m load`` (``make load``), which points it at the edge; ``--pace`` sets the
tasks per second of each user.
"""

from __future__ import annotations

import itertools
import random
import uuid
from typing import Any

import locust

from load.grpc_user import GrpcUser
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.order.v1 import order_pb2, order_pb2_grpc
from order_service.domain import Reason, failure_class

CUSTOMERS_PER_USER = 8
#: A customer id payment declines (payment_service.domain.DECLINE_PREFIX).
DECLINED_CUSTOMER = "decline-load"
ORDER_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
#: Orders a user remembers for its reads.
KNOWN_ORDERS = 20
DEFAULT_PACE = 1.0

ORDERS = "/mesh.order.v1.OrderService"
INVENTORY = "/mesh.inventory.v1.InventoryService"
#: The names in Locust's statistics, one per kind of call a task makes.
LIST_ITEMS = f"{INVENTORY}/ListItems"
GET_ITEM = f"{INVENTORY}/GetItem"
CREATE_ORDER = f"{ORDERS}/CreateOrder"
CREATE_ORDER_RETRY = f"{ORDERS}/CreateOrder (same request_id again)"
CREATE_ORDER_DECLINED = f"{ORDERS}/CreateOrder (declined customer)"
GET_ORDER = f"{ORDERS}/GetOrder"
LIST_ORDERS = f"{ORDERS}/ListOrders"
NAMES = (
    LIST_ITEMS,
    GET_ITEM,
    CREATE_ORDER,
    CREATE_ORDER_RETRY,
    CREATE_ORDER_DECLINED,
    GET_ORDER,
    LIST_ORDERS,
)


@locust.events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--pace",
        type=float,
        default=DEFAULT_PACE,
        help=f"tasks per second of each user, 0: no wait between tasks (default {DEFAULT_PACE})",
    )


def _status(order: order_pb2.Order) -> str:
    return order_pb2.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")


def _confirmed(order: order_pb2.Order) -> str | None:
    if order.status == order_pb2.ORDER_STATUS_CONFIRMED:
        return None
    return f"order {_status(order)}: {order.failure_reason}".rstrip(": ")


def _declined(order: order_pb2.Order) -> str | None:
    failed = order.status == order_pb2.ORDER_STATUS_FAILED
    if failed and failure_class(order.failure_reason) is Reason.DECLINED:
        return None
    return f"a declined customer's order is {_status(order)}: {order.failure_reason}"


class Shopper(GrpcUser):
    """Browses more than it buys: of every 12 tasks, 4 browse, 3 order, 1 retries an order,
    1 is a declined customer's order and 3 read orders back."""

    def on_start(self) -> None:
        self.items = inventory_pb2_grpc.InventoryServiceStub(self.channel)
        self.orders = order_pb2_grpc.OrderServiceStub(self.channel)
        run = uuid.uuid4().hex[:10]
        self.customers = itertools.cycle(f"load-{run}-{n}" for n in range(CUSTOMERS_PER_USER))
        self.sequence = itertools.count()
        self.run = run
        self.skus: list[str] = []
        self.known: list[order_pb2.Order] = []
        pace = self.environment.parsed_options.pace if self.environment.parsed_options else 0
        self.pacing = locust.constant_throughput(pace) if pace > 0 else locust.constant(0)

    def wait_time(self) -> float:
        return float(self.pacing(self))

    def _request_id(self) -> str:
        return f"load-{self.run}-{next(self.sequence)}"

    def _new_order(self, customer_id: str) -> order_pb2.CreateOrderRequest:
        sku = random.choice(self.skus) if self.skus else "SKU-0001"
        return order_pb2.CreateOrderRequest(
            customer_id=customer_id,
            request_id=self._request_id(),
            lines=[money_pb2.Line(sku=sku, quantity=1)],
        )

    def _remember(self, order: order_pb2.Order | None) -> None:
        if order is not None:
            self.known = [*self.known[-(KNOWN_ORDERS - 1) :], order]

    @locust.task(4)
    def browse(self) -> None:
        page = self.call(
            LIST_ITEMS,
            self.items.ListItems,
            inventory_pb2.ListItemsRequest(page_size=50),
            timeout=READ_TIMEOUT_S,
        )
        if page is not None and page.items:
            self.skus = [item.sku for item in page.items]
        if self.skus:
            self.call(
                GET_ITEM,
                self.items.GetItem,
                inventory_pb2.GetItemRequest(sku=random.choice(self.skus)),
                timeout=READ_TIMEOUT_S,
            )

    @locust.task(3)
    def order(self) -> None:
        request = self._new_order(next(self.customers))
        order = self.call(
            CREATE_ORDER,
            self.orders.CreateOrder,
            request,
            timeout=ORDER_TIMEOUT_S,
            check=_confirmed,
        )
        self._remember(order)

    @locust.task(1)
    def order_twice(self) -> None:
        """A client that lost the answer sends the same request again: same order back."""
        request = self._new_order(next(self.customers))
        first = self.call(
            CREATE_ORDER,
            self.orders.CreateOrder,
            request,
            timeout=ORDER_TIMEOUT_S,
            check=_confirmed,
        )
        if first is None:
            return
        self._remember(first)

        def same_order(again: order_pb2.Order) -> str | None:
            if again.order_id != first.order_id:
                return f"a repeated request_id answered {again.order_id}, not {first.order_id}"
            return _confirmed(again)

        self.call(
            CREATE_ORDER_RETRY,
            self.orders.CreateOrder,
            request,
            timeout=ORDER_TIMEOUT_S,
            check=same_order,
        )

    @locust.task(1)
    def declined_order(self) -> None:
        # Its own customer id per user, so one user's declines never meet another's rate limit.
        request = self._new_order(f"{DECLINED_CUSTOMER}-{self.run}")
        self.call(
            CREATE_ORDER_DECLINED,
            self.orders.CreateOrder,
            request,
            timeout=ORDER_TIMEOUT_S,
            check=_declined,
        )

    @locust.task(3)
    def read_orders(self) -> None:
        if not self.known:
            return
        known = random.choice(self.known)

        def same(order: order_pb2.Order) -> str | None:
            if order.order_id != known.order_id or order.status != known.status:
                return f"GetOrder answered {order.order_id} {_status(order)}"
            return None

        self.call(
            GET_ORDER,
            self.orders.GetOrder,
            order_pb2.GetOrderRequest(order_id=known.order_id),
            timeout=READ_TIMEOUT_S,
            check=same,
        )
        self.call(
            LIST_ORDERS,
            self.orders.ListOrders,
            order_pb2.ListOrdersRequest(customer_id=known.customer_id, page_size=10),
            timeout=READ_TIMEOUT_S,
        )
