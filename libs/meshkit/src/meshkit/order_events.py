"""The order events stream: the contract between the order service, which publishes an event
after each order's final state change (through its transactional outbox), and the services that
consume it.

One event is one stream entry, written ``XADD {mesh:orders}:events MAXLEN ~ N * field value ...``
with every field a string (:meth:`OrderEvent.to_fields`). ``event_id`` is the same on every
publish of one event (a relay may publish an entry twice after a crash, never a different id),
so a consumer that remembers the ids it has handled is exactly-once. Fields a consumer does not
know are ignored, so new optional fields keep ``schema`` at 1; a field changing meaning, or a
required one being added, raises it.

Lives in meshkit so publisher and consumers import it without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

#: The stream key. The hash tag keeps every key of the order events (the stream, a consumer's
#: dead letters or dedup set, if they take the same tag) in one Redis Cluster slot.
HASH_TAG: Final = "{mesh:orders}"
STREAM: Final = f"{HASH_TAG}:events"
#: Entries the stream keeps at least (``MAXLEN ~``); the publisher's setting defaults to it.
DEFAULT_MAXLEN: Final = 100_000
SCHEMA_VERSION: Final = "1"

# Event types, and the final order status (its name in mesh.order.v1.OrderStatus) each carries.
ORDER_CONFIRMED: Final = "order.confirmed"
ORDER_FAILED: Final = "order.failed"
STATUS_CONFIRMED: Final = "ORDER_STATUS_CONFIRMED"
STATUS_FAILED: Final = "ORDER_STATUS_FAILED"
STATUS_OF_TYPE: Final[Mapping[str, str]] = {
    ORDER_CONFIRMED: STATUS_CONFIRMED,
    ORDER_FAILED: STATUS_FAILED,
}

# Field names, as written in the stream.
EVENT_ID: Final = "event_id"
TYPE: Final = "type"
ORDER_ID: Final = "order_id"
CUSTOMER_ID: Final = "customer_id"
STATUS: Final = "status"
REASON: Final = "reason"
TOTAL_UNITS: Final = "total_units"  # the order total in minor units (cents), "" when unknown
TOTAL_CURRENCY: Final = "total_currency"  # ISO 4217 code, "" exactly when total_units is
OCCURRED_AT_MS: Final = "occurred_at_ms"
TRACE_ID: Final = "trace_id"  # 32 hex digits of the trace that finished the order, or ""
#: The W3C traceparent of the span that finished the order, or "": a consumer's span for the
#: event joins that trace. Optional: an entry written without it reads as "".
TRACEPARENT: Final = "traceparent"
SCHEMA: Final = "schema"
FIELDS: Final = (
    EVENT_ID,
    TYPE,
    ORDER_ID,
    CUSTOMER_ID,
    STATUS,
    REASON,
    TOTAL_UNITS,
    TOTAL_CURRENCY,
    OCCURRED_AT_MS,
    TRACE_ID,
    TRACEPARENT,
    SCHEMA,
)


class MalformedEvent(ValueError):
    """A stream entry that is not an order event this code can read; says which field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"malformed order event: {field} {problem}")
        self.field = field


def event_id(order_id: str, status: str) -> str:
    """The id of an order's final event: an order reaches one final status once, so the pair
    names the event, and any publisher of it (a relay after a crash, a second relay) agrees."""
    return f"{order_id}:{status}"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderEvent:
    """An order's final state change, as published on :data:`STREAM`."""

    event_id: str
    type: str
    order_id: str
    customer_id: str
    status: str
    reason: str = ""
    #: The total in minor units and its currency; both None when the order has none (it failed
    #: before stock was reserved).
    total_units: int | None = None
    total_currency: str | None = None
    occurred_at_ms: int
    trace_id: str = ""
    traceparent: str = ""

    def __post_init__(self) -> None:
        for name in (EVENT_ID, ORDER_ID, CUSTOMER_ID):
            if not getattr(self, name):
                raise MalformedEvent(name, "is empty")
        expected = STATUS_OF_TYPE.get(self.type)
        if expected is None:
            known = sorted(STATUS_OF_TYPE)
            raise MalformedEvent(TYPE, f"must be one of {known}, got {self.type!r}")
        if self.status != expected:
            raise MalformedEvent(STATUS, f"must be {expected} for {self.type}, got {self.status!r}")
        if (self.total_units is None) != (self.total_currency is None):
            raise MalformedEvent(TOTAL_CURRENCY, "must be set exactly when total_units is")
        if self.total_currency is not None and not self.total_currency:
            raise MalformedEvent(TOTAL_CURRENCY, "is empty while total_units is set")
        if self.occurred_at_ms < 0:
            raise MalformedEvent(OCCURRED_AT_MS, f"must be >= 0, got {self.occurred_at_ms}")

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields, every one a string, in :data:`FIELDS` order."""
        return {
            EVENT_ID: self.event_id,
            TYPE: self.type,
            ORDER_ID: self.order_id,
            CUSTOMER_ID: self.customer_id,
            STATUS: self.status,
            REASON: self.reason,
            TOTAL_UNITS: "" if self.total_units is None else str(self.total_units),
            TOTAL_CURRENCY: self.total_currency or "",
            OCCURRED_AT_MS: str(self.occurred_at_ms),
            TRACE_ID: self.trace_id,
            TRACEPARENT: self.traceparent,
            SCHEMA: SCHEMA_VERSION,
        }

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[bytes, bytes]
        | Mapping[str, str]
        | Mapping[bytes | str, bytes | str]
        | None,
    ) -> OrderEvent:
        """Reads a stream entry's fields as redis-py returns them (bytes, or str with
        ``decode_responses``); MalformedEvent naming the field if it is no valid event.

        None is what XREADGROUP gives for a pending entry since trimmed from the stream.
        """
        if fields is None:
            raise MalformedEvent("entry", "has no fields (trimmed from the stream)")
        text = {_text(k, "field name"): _text(v, "value") for k, v in fields.items()}

        def required(name: str) -> str:
            try:
                return text[name]
            except KeyError:
                raise MalformedEvent(name, "is missing") from None

        schema = required(SCHEMA)
        if schema != SCHEMA_VERSION:
            raise MalformedEvent(SCHEMA, f"must be {SCHEMA_VERSION}, got {schema!r}")
        units = required(TOTAL_UNITS)
        currency = required(TOTAL_CURRENCY)
        return cls(
            event_id=required(EVENT_ID),
            type=required(TYPE),
            order_id=required(ORDER_ID),
            customer_id=required(CUSTOMER_ID),
            status=required(STATUS),
            reason=required(REASON),
            total_units=None if units == "" else _integer(TOTAL_UNITS, units),
            total_currency=None if units == "" and currency == "" else currency,
            occurred_at_ms=_integer(OCCURRED_AT_MS, required(OCCURRED_AT_MS)),
            trace_id=required(TRACE_ID),
            traceparent=text.get(TRACEPARENT, ""),
        )


def _text(raw: bytes | str, what: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MalformedEvent(repr(raw[:40]), f"{what} is not UTF-8") from None


#: int() would also take " 12", "1_000", "+3" and non-ASCII digits; the publisher writes these.
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _integer(field: str, raw: str) -> int:
    if _INTEGER.fullmatch(raw) is None:
        raise MalformedEvent(field, f"must be an integer, got {raw!r}")
    return int(raw)
