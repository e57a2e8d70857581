"""Notification rules: what an order event tells its customer, when an event is poison, and
how a list request is checked. Pure: no gRPC, no SQL, no Redis."""

from __future__ import annotations

from dataclasses import dataclass

from meshkit import order_events
from meshkit.errors import InvalidArgument, Validator
from meshkit.ids import CUSTOMER_ID, new_id
from meshkit.order_events import OrderEvent
from meshkit.paging import check_page_size, cursor_int, decode_token, encode_token


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """What one customer was told about one order event; ``seq`` (the store's) orders
    notifications of the same millisecond."""

    notification_id: str
    event_id: str
    order_id: str
    customer_id: str
    #: The order's final status, its mesh.order.v1.OrderStatus name.
    status: str
    reason: str
    total_units: int | None
    total_currency: str | None
    message: str
    occurred_at_ms: int
    stored_at_ms: int
    seq: int = 0


def message(event: OrderEvent) -> str:
    if event.type == order_events.ORDER_CONFIRMED:
        return f"Your order {event.order_id} is confirmed."
    return f"Your order {event.order_id} failed: {event.reason or 'no reason given'}."


def notification(event: OrderEvent, *, stored_at_ms: int) -> Notification:
    """The notification an event makes (its id is new; the event id is what dedups it)."""
    return Notification(
        notification_id=new_id("ntf"),
        event_id=event.event_id,
        order_id=event.order_id,
        customer_id=event.customer_id,
        status=event.status,
        reason=event.reason,
        total_units=event.total_units,
        total_currency=event.total_currency,
        message=message(event),
        occurred_at_ms=event.occurred_at_ms,
        stored_at_ms=stored_at_ms,
    )


# --- deliveries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPolicy:
    """When an event that keeps failing, or keeps being given to consumers that die before they
    acknowledge it, stops being retried and goes to the dead letters."""

    max_deliveries: int

    def __post_init__(self) -> None:
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {self.max_deliveries}")

    def gives_up_after_failure(self, deliveries: int) -> bool:
        """A delivery failed: the event is retried (after the claim idle time) until this one
        was its ``max_deliveries``-th."""
        return deliveries >= self.max_deliveries

    def gives_up_before_processing(self, deliveries: int) -> bool:
        """A claimed event was delivered more than ``max_deliveries`` times and never
        acknowledged, so no failure was seen: its consumers died or stalled on it (a process
        crash on it would kill the next consumer too)."""
        return deliveries > self.max_deliveries


def overdelivered_reason(deliveries: int) -> str:
    return f"delivered {deliveries} times without being acknowledged (its consumers died on it)"


# --- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageQuery:
    customer_id: str
    size: int
    #: Only notifications before this (occurred_at_ms, seq), the last of the previous page;
    #: None: from the newest.
    before: tuple[int, int] | None


def page_query(customer_id: str, page_size: int, page_token: str) -> PageQuery:
    """Checks a ListNotifications request; InvalidArgument names every bad field."""
    v = Validator()
    CUSTOMER_ID.check(v, customer_id, "customer_id")
    size = check_page_size(v, page_size)
    before = None
    if page_token:
        try:
            cursor = decode_token(page_token, customer_id)
            before = (cursor_int(cursor, "t"), cursor_int(cursor, "s", low=1))
        except InvalidArgument as error:
            for violation in error.violations:
                v.add(violation.field, violation.description)
    v.raise_if_invalid()
    return PageQuery(customer_id, size, before)


def next_page_token(query: PageQuery, page: list[Notification]) -> str:
    """The token after ``page`` (fetched with one row more than asked), "" on the last page."""
    if len(page) <= query.size:
        return ""
    last = page[query.size - 1]
    return encode_token({"t": last.occurred_at_ms, "s": last.seq}, query.customer_id)
