"""Order events round-trip through a real Redis stream as all-string fields, and a malformed
entry is refused with the field it gets wrong."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from mesh.order.v1 import order_pb2
from meshkit import order_events
from meshkit.order_events import MalformedEvent, OrderEvent

CONFIRMED = OrderEvent(
    event_id=order_events.event_id("ord_" + "a" * 32, order_events.STATUS_CONFIRMED),
    type=order_events.ORDER_CONFIRMED,
    order_id="ord_" + "a" * 32,
    customer_id="cust-1",
    status=order_events.STATUS_CONFIRMED,
    total_units=1999,
    total_currency="USD",
    occurred_at_ms=1_764_000_000_123,
    trace_id="0af7651916cd43dd8448eb211c80319c",
)
FAILED = OrderEvent(
    event_id="ord_" + "b" * 32 + ":ORDER_STATUS_FAILED",
    type=order_events.ORDER_FAILED,
    order_id="ord_" + "b" * 32,
    customer_id="cust-2",
    status=order_events.STATUS_FAILED,
    reason="out of stock: SKU-0001",
    occurred_at_ms=5,
)


def test_statuses_are_the_proto_enum_names() -> None:
    assert set(order_events.STATUS_OF_TYPE.values()) == {
        order_pb2.OrderStatus.Name(order_pb2.ORDER_STATUS_CONFIRMED),
        order_pb2.OrderStatus.Name(order_pb2.ORDER_STATUS_FAILED),
    }


def test_the_stream_key_has_the_orders_hash_tag() -> None:
    assert order_events.STREAM == "{mesh:orders}:events"


def test_fields_are_all_strings_and_every_contract_field() -> None:
    fields = CONFIRMED.to_fields()
    assert tuple(fields) == order_events.FIELDS
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["total_units"] == "1999"
    assert fields["schema"] == "1"
    assert FAILED.to_fields()["total_units"] == FAILED.to_fields()["total_currency"] == ""


@pytest.mark.parametrize("event", [CONFIRMED, FAILED])
def test_round_trip_through_a_real_stream(redis_url: str, event: OrderEvent) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(order_events.STREAM, event.to_fields(), maxlen=10, approximate=True)  # type: ignore[arg-type]
    entries = client.xrange(order_events.STREAM)
    assert isinstance(entries, list)
    [(_, fields)] = entries
    assert OrderEvent.from_fields(fields) == event
    decoded = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = decoded.xrange(order_events.STREAM)
    assert isinstance(entries, list)
    [(_, text)] = entries
    assert OrderEvent.from_fields(text) == event


def test_unknown_fields_are_ignored() -> None:
    assert OrderEvent.from_fields({**CONFIRMED.to_fields(), "later": "x"}) == CONFIRMED


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": "2"}, "schema"),
        ({"type": "order.shipped"}, "type"),
        ({"status": "ORDER_STATUS_FAILED"}, "status"),
        ({"event_id": ""}, "event_id"),
        ({"order_id": ""}, "order_id"),
        ({"total_units": "12.5"}, "total_units"),
        ({"total_units": " 12"}, "total_units"),
        ({"total_units": "--5"}, "total_units"),
        ({"total_currency": ""}, "total_currency"),
        ({"total_units": ""}, "total_currency"),
        ({"occurred_at_ms": "soon"}, "occurred_at_ms"),
        ({"occurred_at_ms": "-1"}, "occurred_at_ms"),
    ],
)
def test_a_malformed_entry_names_its_field(change: dict[str, str], field: str) -> None:
    with pytest.raises(MalformedEvent, match=f"malformed order event: {field} ") as caught:
        OrderEvent.from_fields({**CONFIRMED.to_fields(), **change})
    assert caught.value.field == field


@pytest.mark.parametrize(
    "missing", [name for name in order_events.FIELDS if name != order_events.TRACEPARENT]
)
def test_a_missing_field_is_named(missing: str) -> None:
    fields = CONFIRMED.to_fields()
    del fields[missing]
    with pytest.raises(MalformedEvent, match=f"{missing} is missing"):
        OrderEvent.from_fields(fields)


def test_an_entry_written_without_a_traceparent_reads_as_one_outside_a_trace() -> None:
    fields = {
        **CONFIRMED.to_fields(),
        order_events.TRACEPARENT: "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    }
    assert OrderEvent.from_fields(fields).traceparent == fields[order_events.TRACEPARENT]
    del fields[order_events.TRACEPARENT]
    assert OrderEvent.from_fields(fields).traceparent == ""


def test_a_trimmed_entry_is_refused() -> None:
    with pytest.raises(MalformedEvent, match="entry has no fields"):
        OrderEvent.from_fields(None)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    fields = {k.encode(): v.encode() for k, v in CONFIRMED.to_fields().items()}
    fields[b"reason"] = b"\xff\xfe"
    with pytest.raises(MalformedEvent, match="not UTF-8"):
        OrderEvent.from_fields(fields)


def test_a_bad_event_cannot_be_built() -> None:
    with pytest.raises(MalformedEvent, match="total_currency"):
        replace(CONFIRMED, total_currency=None)


@given(
    reason=st.text(),
    units=st.none() | st.integers(-(2**63), 2**63 - 1),
    at=st.integers(0, 2**62),
)
def test_any_valid_event_round_trips(reason: str, units: int | None, at: int) -> None:
    event = replace(
        FAILED,
        reason=reason,
        total_units=units,
        total_currency=None if units is None else "EUR",
        occurred_at_ms=at,
    )
    assert OrderEvent.from_fields(event.to_fields()) == event
