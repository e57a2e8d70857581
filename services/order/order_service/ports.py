"""The ports the saga is written against: what it needs from inventory, payment, storage and
its lease.

Adapters implement them (``clients`` over gRPC, ``store`` over SQLite, ``leases`` over Redis);
tests may pass fakes. Nothing here imports grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshkit.errors import FieldViolation
from order_service.domain import Line, Money, Order


class RemoteError(Exception):
    """A call to another service failed with a gRPC status.

    ``definite`` is True when the callee has certainly done nothing; otherwise the call
    may have taken effect, and the saga treats its outcome as unknown. ``sent`` is False
    when the call never left this process (the resilience library refused it), which is
    definite too, and says more: the callee never even saw it.
    """

    def __init__(
        self,
        code: str,
        message: str,
        violations: tuple[FieldViolation, ...] = (),
        *,
        definite: bool,
        sent: bool = True,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.violations = violations
        self.definite = definite or not sent
        self.sent = sent


class FencedOut(Exception):
    """A saga write carried an older fencing token than the order's row has seen: another
    runner took the order over, and this one's lease is lost whatever it believes."""

    def __init__(self, order_id: str, fence: int, stored: int) -> None:
        super().__init__(f"order {order_id}: write with fence {fence} refused (row has {stored})")
        self.order_id = order_id
        self.fence = fence
        self.stored = stored


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    reservation_id: str
    state: str  # RESERVED | COMMITTED | RELEASED
    total: Money | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    payment_id: str
    state: str  # CAPTURED | DECLINED | REFUNDED | VOIDED
    decline_reason: str = ""


class Inventory(Protocol):
    def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation: ...
    def commit(self, reservation_id: str) -> Reservation: ...
    def release(self, reservation_id: str) -> Reservation: ...


class Payments(Protocol):
    def charge(
        self, *, order_id: str, customer_id: str, amount: Money, request_id: str
    ) -> Payment: ...
    def void_charge(self, *, charge_request_id: str, order_id: str) -> Payment: ...
    def refund(self, *, payment_id: str, request_id: str) -> Payment: ...


class Store(Protocol):
    """Every write carries the runner's fencing token and may raise :class:`FencedOut`."""

    def save(self, order: Order, *, fence: int) -> Order: ...
    def delete(self, order_id: str, *, fence: int) -> None: ...


class Lease(Protocol):
    #: This grant's fencing token (see :mod:`order_service.leases`).
    @property
    def fence(self) -> int: ...
    def keep(self) -> bool: ...
