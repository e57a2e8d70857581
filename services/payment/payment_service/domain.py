"""Payment rules: validation, the decline rule, the state machine and fault injection.

Pure: no gRPC, no SQL. Errors are meshkit domain errors; the server maps them to statuses.
"""

from __future__ import annotations

import enum
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshkit.errors import FailedPrecondition, Validator
from meshkit.ids import CUSTOMER_ID, REQUEST_ID, resource_id

ORDER_ID = resource_id("ord")
PAYMENT_ID = resource_id("pay")
CURRENCY_RE = re.compile(r"[A-Z]{3}")

#: Customers whose id starts with this are always declined, so anyone can watch an order fail.
DECLINE_PREFIX = "decline"
DECLINE_REASON = "card declined (test customer)"


class PaymentState(enum.StrEnum):
    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"
    REFUNDED = "REFUNDED"
    VOIDED = "VOIDED"


@dataclass(frozen=True, slots=True)
class Money:
    currency_code: str
    amount_minor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeRequest:
    order_id: str
    customer_id: str
    amount: Money
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    payment_id: str
    request_id: str
    order_id: str
    customer_id: str
    amount: Money
    state: PaymentState
    version: str
    decline_reason: str = ""
    refund_request_id: str | None = None

    @property
    def is_tombstone(self) -> bool:
        """A VOIDED row: VoidCharge came before any Charge (real charges never become VOIDED)."""
        return self.state is PaymentState.VOIDED

    def same_charge(self, request: ChargeRequest) -> bool:
        """Whether ``request`` repeats the charge that created this payment (AIP-155)."""
        if self.is_tombstone:
            # The tombstone only knows the order; a late Charge for that order is the one voided.
            return self.order_id == request.order_id
        return (
            self.order_id == request.order_id
            and self.customer_id == request.customer_id
            and self.amount == request.amount
        )


# --- validation -------------------------------------------------------------------------------


def validate_charge(request: ChargeRequest) -> None:
    """Raises InvalidArgument naming every bad field of a Charge."""
    v = Validator()
    ORDER_ID.check(v, request.order_id, "order_id")
    CUSTOMER_ID.check(v, request.customer_id, "customer_id")
    REQUEST_ID.check(v, request.request_id, "request_id")
    # An unset amount reads as ("", 0), so it is reported by these two checks.
    v.check(request.amount.amount_minor > 0, "amount.amount_minor", "must be > 0")
    v.check(
        CURRENCY_RE.fullmatch(request.amount.currency_code) is not None,
        "amount.currency_code",
        "must be a 3-letter uppercase ISO 4217 code, e.g. USD",
    )
    v.raise_if_invalid()


def validate_refund(payment_id: str, request_id: str) -> None:
    v = Validator()
    PAYMENT_ID.check(v, payment_id, "payment_id")
    REQUEST_ID.check(v, request_id, "request_id")
    v.raise_if_invalid()


def validate_get(payment_id: str) -> None:
    v = Validator()
    PAYMENT_ID.check(v, payment_id, "payment_id")
    v.raise_if_invalid()


def validate_void(charge_request_id: str, order_id: str) -> None:
    v = Validator()
    REQUEST_ID.check(v, charge_request_id, "charge_request_id")
    ORDER_ID.check(v, order_id, "order_id")
    v.raise_if_invalid()


# --- rules --------------------------------------------------------------------------------------


def decline_reason(customer_id: str) -> str:
    """Why this customer's charge is declined, or "" when it is captured."""
    return DECLINE_REASON if customer_id.startswith(DECLINE_PREFIX) else ""


def initial_state(customer_id: str) -> PaymentState:
    return PaymentState.DECLINED if decline_reason(customer_id) else PaymentState.CAPTURED


def after_refund(payment: Payment) -> PaymentState:
    """CAPTURED→REFUNDED, REFUNDED→REFUNDED; nothing was taken from DECLINED or VOIDED."""
    if payment.state in (PaymentState.CAPTURED, PaymentState.REFUNDED):
        return PaymentState.REFUNDED
    raise FailedPrecondition(
        f"payment {payment.payment_id} is {payment.state}: no money was taken, nothing to refund"
    )


def after_void(payment: Payment) -> PaymentState:
    """Voiding a captured charge gives the money back; any other state already moved none."""
    return PaymentState.REFUNDED if payment.state is PaymentState.CAPTURED else payment.state


# --- fault injection ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPolicy:
    """What PAYMENT_LATENCY_MS and PAYMENT_FAULT_RATE (or the live fault file) do to a Charge:
    ``latency_s`` added to a ``latency_rate`` share of them, then a ``rate`` share failing. RNG
    and sleep injected."""

    rate: float = 0.0
    latency_s: float = 0.0
    latency_rate: float = 1.0
    random: Callable[[], float] = field(default=random.random)
    sleep: Callable[[float], None] = field(default=time.sleep)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in 0.0..1.0, got {self.rate}")
        if self.latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")
        if not 0.0 <= self.latency_rate <= 1.0:
            raise ValueError(f"latency_rate must be in 0.0..1.0, got {self.latency_rate}")

    def strikes(self) -> bool:
        """Adds the configured latency, then says whether this call is to fail.

        The RNG is drawn only for a rate strictly between 0 and 1, so rates of 0 and 1 never
        depend on it.
        """
        if self.latency_s > 0 and self._hits(self.latency_rate):
            self.sleep(self.latency_s)
        return self._hits(self.rate)

    def _hits(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.random() < rate
