"""Pure rules: request validation, the seed catalog, stock checks, reservation states."""

from __future__ import annotations

import base64

import pytest

from inventory_service import domain
from inventory_service.domain import (
    CATALOG,
    Line,
    Reservation,
    ReservationState,
    ReserveCommand,
    ReservedLine,
)
from meshkit.errors import FailedPrecondition, InvalidArgument
from meshkit.ids import SKU_RE, new_id
from meshkit.paging import encode_token

ORDER = new_id("ord")


def _fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


def test_catalog_has_at_least_20_valid_unique_skus_priced_in_minor_units() -> None:
    assert len(CATALOG) >= 20
    skus = [entry.sku for entry in CATALOG]
    assert skus == sorted(set(skus))
    assert all(SKU_RE.fullmatch(sku) for sku in skus)
    assert all(isinstance(e.price_minor, int) and e.price_minor > 0 for e in CATALOG)
    assert len({entry.name for entry in CATALOG}) == len(CATALOG)


def test_parse_reserve_accepts_a_valid_request() -> None:
    command = domain.parse_reserve(ORDER, [("SKU-0001", 2), ("SKU-0002", 1000)])
    assert command == ReserveCommand(ORDER, (Line("SKU-0001", 2), Line("SKU-0002", 1000)))


@pytest.mark.parametrize(
    ("order_id", "lines", "fields"),
    [
        ("", [("SKU-0001", 1)], ["order_id"]),
        ("ord_123", [("SKU-0001", 1)], ["order_id"]),
        (ORDER, [], ["lines"]),
        (ORDER, [(f"SKU-{i:04d}", 1) for i in range(51)], ["lines"]),
        (ORDER, [("SKU-0001", 0)], ["lines[0].quantity"]),
        (ORDER, [("SKU-0001", 1001)], ["lines[0].quantity"]),
        (ORDER, [("", 1)], ["lines[0].sku"]),
        (ORDER, [("SKU-0001", 1), ("sku 2", 1)], ["lines[1].sku"]),
        (ORDER, [("SKU-0001", 1), ("SKU-0001", 2)], ["lines[1].sku"]),
        ("", [("bad", -1)], ["order_id", "lines[0].sku", "lines[0].quantity"]),
    ],
)
def test_parse_reserve_names_every_bad_field(
    order_id: str, lines: list[tuple[str, int]], fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.parse_reserve(order_id, lines)
    assert _fields(caught.value) == fields


def test_duplicate_sku_names_the_first_occurrence() -> None:
    with pytest.raises(InvalidArgument, match=r"duplicates lines\[0\]\.sku"):
        domain.parse_reserve(ORDER, [("SKU-0001", 1), ("SKU-0001", 2)])


@pytest.mark.parametrize("raw", ["", "res_1", "ord_" + "0" * 32, "res_" + "G" * 32])
def test_parse_reservation_id(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.parse_reservation_id(raw)
    assert _fields(caught.value) == ["reservation_id"]
    good = new_id("res")
    assert domain.parse_reservation_id(good) == good


def test_page_tokens_round_trip_and_reject_forgeries() -> None:
    assert domain.parse_page(0, "") == domain.PageQuery(size=20, after="")
    token = domain.next_page_token("SKU-0010")
    assert domain.parse_page(5, token) == domain.PageQuery(size=5, after="SKU-0010")
    for size in (-1, 101):
        with pytest.raises(InvalidArgument) as caught:
            domain.parse_page(size, "")
        assert _fields(caught.value) == ["page_size"]
    for token in ("not base64!", "e30=", "eyJjIjp7ImFmdGVyIjoxfSwiZiI6ImUzYjBjNDQyOThmYyJ9"):
        with pytest.raises(InvalidArgument) as caught:
            domain.parse_page(5, token)
        assert _fields(caught.value) == ["page_token"]


def test_unknown_skus_are_named_by_line() -> None:
    command = domain.parse_reserve(ORDER, [("SKU-0001", 1), ("SKU-9999", 1)])
    with pytest.raises(InvalidArgument) as caught:
        domain.check_known(command, {"SKU-0001"})
    assert _fields(caught.value) == ["lines[1].sku"]
    assert "unknown SKU SKU-9999" in caught.value.message


def test_stock_check_names_sku_requested_and_available() -> None:
    command = domain.parse_reserve(ORDER, [("SKU-0001", 1), ("SKU-0003", 5)])
    domain.check_stock(command, {"SKU-0001": 1, "SKU-0003": 5})
    with pytest.raises(FailedPrecondition) as caught:
        domain.check_stock(command, {"SKU-0001": 1, "SKU-0003": 2})
    assert caught.value.message == "out of stock: SKU-0003 (requested 5, available 2)"


def test_same_lines_ignores_line_order() -> None:
    command = ReserveCommand(ORDER, (Line("A", 1), Line("B", 2)))
    assert command.same_lines([Line("B", 2), Line("A", 1)])
    assert not command.same_lines([Line("A", 1), Line("B", 3)])
    assert not command.same_lines([Line("A", 1)])


def _reservation(state: ReservationState) -> Reservation:
    return Reservation("res_x", ORDER, state, (ReservedLine("SKU-0001", 2, 150),))


def test_state_machine() -> None:
    assert domain.commit(_reservation(ReservationState.RESERVED)) is ReservationState.COMMITTED
    assert domain.commit(_reservation(ReservationState.COMMITTED)) is ReservationState.COMMITTED
    assert domain.release(_reservation(ReservationState.RESERVED)) is ReservationState.RELEASED
    assert domain.release(_reservation(ReservationState.RELEASED)) is ReservationState.RELEASED
    with pytest.raises(FailedPrecondition, match="released"):
        domain.commit(_reservation(ReservationState.RELEASED))
    with pytest.raises(FailedPrecondition, match="already committed"):
        domain.release(_reservation(ReservationState.COMMITTED))


def test_total_is_quantity_times_unit_price() -> None:
    reservation = Reservation(
        "res_x",
        ORDER,
        ReservationState.RESERVED,
        (ReservedLine("A", 2, 150), ReservedLine("B", 3, 1000)),
    )
    assert reservation.total_minor == 3300


# --- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sku", "description"),
    [
        (
            "SKU-0001\n",
            r"must be 1-32 characters of \[A-Z0-9-\] \(e\.g\. SKU-0001\), got 'SKU-0001\\n'",
        ),
        ("A" * 4000, "must be at most 32 characters, got 4000"),
        ("\x00", r"got '\\x00'"),
    ],
)
def test_parse_sku_refuses_hostile_values_without_echoing_them(sku: str, description: str) -> None:
    with pytest.raises(InvalidArgument, match=description) as caught:
        domain.parse_sku(sku)
    assert _fields(caught.value) == ["sku"]
    assert len(caught.value.message) < 120


@pytest.mark.parametrize(
    "raw", [new_id("res") + "\n", "res_" + "0" * 100_000, "r" * 65, "res_" + "é" * 32]
)
def test_parse_reservation_id_refuses_hostile_values(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.parse_reservation_id(raw)
    assert _fields(caught.value) == ["reservation_id"]


def test_parse_reserve_reads_no_further_than_the_limit() -> None:
    lines = [("bad", 0)] * (domain.MAX_LINES + 1)
    with pytest.raises(InvalidArgument) as caught:
        domain.parse_reserve(ORDER + "\n", lines)
    error = caught.value
    assert _fields(error)[:2] == ["order_id", "lines"]
    assert len(error.violations) + error.omitted == 2 + 2 * domain.MAX_LINES


@pytest.mark.parametrize("quantity", [-(2**31), 2**31 - 1])
def test_parse_reserve_refuses_extreme_quantities(quantity: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.parse_reserve(ORDER, [("SKU-0001", quantity)])
    assert _fields(caught.value) == ["lines[0].quantity"]


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 2000).decode(),
        encode_token({"after": "SKU-0001\n"}),
        encode_token({"after": "S" * 33}),
        encode_token({"after": 1}),
        encode_token({}),
        "A" * 100_000,
    ],
)
def test_parse_page_refuses_crafted_tokens(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.parse_page(5, token)
    assert _fields(caught.value) == ["page_token"]
