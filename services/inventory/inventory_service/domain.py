"""Inventory rules: request validation, the seed catalog, stock checks and reservation states.

Pure: no gRPC, no I/O. Validation turns raw request values into domain values or
raises :mod:`meshkit.errors` naming the offending field.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshkit.errors import FailedPrecondition, Validator
from meshkit.ids import SKU, resource_id
from meshkit.limits import MAX_LINES, MAX_QUANTITY
from meshkit.paging import check_page_size, cursor_str, decode_token, encode_token

#: The catalog is priced in one currency, so a reservation total is a plain sum.
CURRENCY = "USD"
ORDER_ID = resource_id("ord")
RESERVATION_ID_PREFIX = "res"
RESERVATION_ID = resource_id(RESERVATION_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    sku: str
    name: str
    price_minor: int


#: Seeded on first start (prices in USD cents). SKUs are never renumbered: orders refer to them.
CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("SKU-0001", "Ethiopia Yirgacheffe Coffee Beans 1 kg", 2899),
    CatalogEntry("SKU-0002", "Stainless Steel Pour-Over Kettle", 4450),
    CatalogEntry("SKU-0003", "Ceramic Coffee Mug 350 ml", 1299),
    CatalogEntry("SKU-0004", "Burr Coffee Grinder", 12900),
    CatalogEntry("SKU-0005", "Cast Iron Skillet 26 cm", 3995),
    CatalogEntry("SKU-0006", "Chef's Knife 20 cm", 8950),
    CatalogEntry("SKU-0007", "Bamboo Cutting Board", 2475),
    CatalogEntry("SKU-0008", "Linen Tea Towels (Set of 3)", 1850),
    CatalogEntry("SKU-0009", "Merino Wool Hiking Socks", 2200),
    CatalogEntry("SKU-0010", "Waterproof Trail Jacket", 18900),
    CatalogEntry("SKU-0011", "Insulated Water Bottle 750 ml", 3400),
    CatalogEntry("SKU-0012", "Ultralight Camping Hammock", 6999),
    CatalogEntry("SKU-0013", "LED Headlamp 400 lm", 2995),
    CatalogEntry("SKU-0014", "Wireless Noise-Cancelling Headphones", 24900),
    CatalogEntry("SKU-0015", "Mechanical Keyboard (Brown Switches)", 11900),
    CatalogEntry("SKU-0016", "USB-C Charging Cable 2 m", 1499),
    CatalogEntry("SKU-0017", "Aluminium Laptop Stand", 4999),
    CatalogEntry("SKU-0018", "Hardcover Dot-Grid Notebook A5", 1995),
    CatalogEntry("SKU-0019", "Fountain Pen, Medium Nib", 3500),
    CatalogEntry("SKU-0020", "Organic Cotton Crew T-Shirt", 2800),
    CatalogEntry("SKU-0021", "Canvas Weekender Bag", 9800),
    CatalogEntry("SKU-0022", "Yoga Mat 6 mm", 5200),
    CatalogEntry("SKU-0023", "Adjustable Dumbbell Pair", 21900),
    CatalogEntry("SKU-0024", "Houseplant Starter Kit: Pothos", 2650),
)


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    name: str
    price_minor: int
    available: int


@dataclass(frozen=True, slots=True)
class ItemsChanged:
    """A committed write: the SKUs whose item it changed; ``created``: some are new."""

    skus: frozenset[str]
    created: bool = False


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    order_id: str
    lines: tuple[Line, ...]

    def same_lines(self, other: Iterable[Line]) -> bool:
        """Whether ``other`` holds the same units per SKU (line order does not matter)."""
        return _by_sku(self.lines) == _by_sku(other)


def _by_sku(lines: Iterable[Line]) -> dict[str, int]:
    return {line.sku: line.quantity for line in lines}


class ReservationState(enum.StrEnum):
    RESERVED = "RESERVED"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"


@dataclass(frozen=True, slots=True)
class ReservedLine:
    sku: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    order_id: str
    state: ReservationState
    lines: tuple[ReservedLine, ...]

    @property
    def total_minor(self) -> int:
        return sum(line.quantity * line.unit_price_minor for line in self.lines)


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of the catalog: up to ``size`` items with SKUs after ``after`` ("" = start)."""

    size: int
    after: str


# --- validation -------------------------------------------------------------------------------


def parse_sku(sku: str, field: str = "sku") -> str:
    validator = Validator()
    SKU.check(validator, sku, field)
    validator.raise_if_invalid()
    return sku


def parse_reservation_id(reservation_id: str, field: str = "reservation_id") -> str:
    validator = Validator()
    RESERVATION_ID.check(validator, reservation_id, field)
    validator.raise_if_invalid()
    return reservation_id


def parse_reserve(order_id: str, lines: Sequence[tuple[str, int]]) -> ReserveCommand:
    """Validates a Reserve request; every bad field is named in one INVALID_ARGUMENT.

    Reads the first ``MAX_LINES`` lines and the count: a caller may pass only
    ``MAX_LINES + 1`` of a huge request's lines, one past the limit being enough to refuse.
    """
    validator = Validator()
    ORDER_ID.check(validator, order_id, "order_id")
    validator.check(1 <= len(lines) <= MAX_LINES, "lines", f"must hold 1..{MAX_LINES} lines")
    first_index: dict[str, int] = {}
    for index, (sku, quantity) in enumerate(lines[:MAX_LINES]):
        if SKU.check(validator, sku, f"lines[{index}].sku"):
            if sku in first_index:
                validator.add(
                    f"lines[{index}].sku", f"duplicates lines[{first_index[sku]}].sku ({sku})"
                )
            else:
                first_index[sku] = index
        validator.check(
            1 <= quantity <= MAX_QUANTITY,
            f"lines[{index}].quantity",
            f"must be between 1 and {MAX_QUANTITY}, got {quantity}",
        )
    validator.raise_if_invalid()
    return ReserveCommand(order_id, tuple(Line(sku, quantity) for sku, quantity in lines))


def parse_page(page_size: int, page_token: str) -> PageQuery:
    validator = Validator()
    size = check_page_size(validator, page_size)
    validator.raise_if_invalid()
    if not page_token:
        return PageQuery(size=size, after="")
    return PageQuery(size=size, after=cursor_str(decode_token(page_token), "after", SKU))


def next_page_token(last_sku: str) -> str:
    return encode_token({"after": last_sku})


# --- stock ------------------------------------------------------------------------------------


def check_known(command: ReserveCommand, known: Iterable[str]) -> None:
    """Unknown SKUs are a bad request (the caller named something that does not exist)."""
    known_skus = set(known)
    validator = Validator()
    for index, line in enumerate(command.lines):
        validator.check(line.sku in known_skus, f"lines[{index}].sku", f"unknown SKU {line.sku}")
    validator.raise_if_invalid()


def check_stock(command: ReserveCommand, available: Mapping[str, int]) -> None:
    """All or nothing: one short line fails the whole reservation, naming every short line."""
    short = [
        f"{line.sku} (requested {line.quantity}, available {available[line.sku]})"
        for line in command.lines
        if available[line.sku] < line.quantity
    ]
    if short:
        raise FailedPrecondition("out of stock: " + ", ".join(short))


# --- reservation state machine ----------------------------------------------------------------
#
#   RESERVED --commit--> COMMITTED --commit--> COMMITTED   (idempotent)
#   RESERVED --release-> RELEASED  --release-> RELEASED    (idempotent; stock returns once)
#   RELEASED --commit--> FAILED_PRECONDITION,  COMMITTED --release--> FAILED_PRECONDITION


def commit(reservation: Reservation) -> ReservationState:
    if reservation.state is ReservationState.RELEASED:
        raise FailedPrecondition(
            f"reservation {reservation.reservation_id} was released and cannot be committed"
        )
    return ReservationState.COMMITTED


def release(reservation: Reservation) -> ReservationState:
    if reservation.state is ReservationState.COMMITTED:
        raise FailedPrecondition(f"reservation {reservation.reservation_id} already committed")
    return ReservationState.RELEASED
