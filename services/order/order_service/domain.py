"""Order rules with no I/O: request validation, the fingerprint, and the saga as a state table.

An order row names the *next* action to take (its ``step``). A step's call ends in one
:class:`Outcome`; :data:`TRANSITIONS` says where that leads. Anything not in the table keeps
the order where it is: a compensation that could not reach its service is retried later by
the recovery loop, which resumes an order at its saved step after a crash at any point.

    step         call                     OK        DECLINED REJECTED INVALID NOT_SENT UNKNOWN
    RESERVE      Reserve(order_id,lines)  CHARGE    FAILED   FAILED   FAILED  FAILED   RELEASE
    CHARGE       Charge("charge-"+id)     COMMIT    RELEASE  RELEASE  -       RELEASE  VOID_CHARGE
    COMMIT       Commit, else Release     CONFIRMED REFUND   -        -       -        -
    VOID_CHARGE  VoidCharge("charge-"+id) RELEASE   -        -        -       -        -
    RELEASE      Release (Reserve for id) FAILED    -        -        -       -        -
    REFUND       Refund("refund-"+id)     FAILED    -        -        -       -        -

    (- = stay at the step.) DECLINED is a business "no": out of stock, payment declined,
    or for COMMIT "the stock went back instead". INVALID is Reserve refusing the lines
    themselves (an unknown SKU; only Reserve reports it): the order FAILED, or, in the request
    that created it, is discarded so the request answers INVALID_ARGUMENT and its request_id
    stays free. NOT_SENT is a call the resilience library refused before any attempt left
    (breaker open, bulkhead full, deadline spent): certainly not done, so only what was done
    is undone (a Charge never sent needs no VoidCharge), and a forward step the order needs,
    Commit, waits for a later run. Only the run of the request that created the order reports
    NOT_SENT for RESERVE and CHARGE: any later run may follow one that crashed after sending
    them, so for it a call never sent is as UNKNOWN as the earlier one.

Every position is saved before its step runs, but CHARGE (:data:`UNSAVED_STEPS`); on the
happy path that is three writes, each needed for the saga to survive a crash:

    RESERVE      the insert: from the first call on, only this row says stock may be held
    CHARGE       not saved: a saga stopped before COMMIT resumes at RESERVE, and Reserve
                 (idempotent by order_id) and Charge (by "charge-"+order_id) answer again
                 with the same reservation, total and payment, so nothing is lost
    COMMIT       after Commit the stock cannot be released and Reserve answers COMMITTED,
                 which a rerun from RESERVE would take for a refusal: recovery must go forward
    CONFIRMED    the answer itself, which GetOrder and duplicate requests read

A compensating step is saved before it runs (the decision to undo and its reason must
survive: a rerun from RESERVE might go forward instead), and so is a finished order.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from meshkit.errors import FieldViolation, Validator
from meshkit.ids import CUSTOMER_ID, REQUEST_ID, SKU, resource_id
from meshkit.limits import MAX_LINES, MAX_QUANTITY

ORDER_ID_PREFIX = "ord"
ORDER_ID = resource_id(ORDER_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Money:
    currency_code: str
    amount_minor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOrder:
    """A validated CreateOrder request."""

    customer_id: str
    lines: tuple[Line, ...]
    request_id: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.customer_id, self.lines)


#: Compact JSON, made once: json.dumps(..., separators=...) builds a new encoder every call.
_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":")).encode


def fingerprint(customer_id: str, lines: Sequence[Line]) -> str:
    """sha256 of the canonical payload: the same order whatever the order of its lines."""
    canonical = _CANONICAL_JSON(
        {"customer_id": customer_id, "lines": sorted((ln.sku, ln.quantity) for ln in lines)}
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_create(
    customer_id: str, lines: Sequence[tuple[str, int]], request_id: str
) -> NewOrder:
    """Checks every field and raises one InvalidArgument naming all the bad ones.

    Reads the first ``MAX_LINES`` lines and the count: a caller may pass only
    ``MAX_LINES + 1`` of a huge request's lines, one past the limit being enough to refuse.
    """
    v = Validator()
    check_customer_id(v, customer_id, required=True)
    REQUEST_ID.check(v, request_id, "request_id")
    v.check(1 <= len(lines) <= MAX_LINES, "lines", f"must have 1 to {MAX_LINES} lines")
    first_seen: dict[str, int] = {}
    for i, (sku, quantity) in enumerate(lines[:MAX_LINES]):
        if SKU.check(v, sku, f"lines[{i}].sku"):
            if sku in first_seen:
                v.add(f"lines[{i}].sku", f"duplicates lines[{first_seen[sku]}].sku ({sku})")
            else:
                first_seen[sku] = i
        v.check(
            1 <= quantity <= MAX_QUANTITY,
            f"lines[{i}].quantity",
            f"must be between 1 and {MAX_QUANTITY}, got {quantity}",
        )
    v.raise_if_invalid()
    return NewOrder(
        customer_id=customer_id,
        lines=tuple(Line(sku, quantity) for sku, quantity in lines),
        request_id=request_id,
    )


def check_customer_id(v: Validator, customer_id: str, *, required: bool) -> None:
    CUSTOMER_ID.check(v, customer_id, "customer_id", required=required)


def check_order_id(v: Validator, order_id: str, field: str = "order_id") -> None:
    ORDER_ID.check(v, order_id, field)


class Status(enum.StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"


class Step(enum.StrEnum):
    """The next action for a PENDING order; DONE once it is CONFIRMED or FAILED."""

    RESERVE = "RESERVE"
    CHARGE = "CHARGE"
    COMMIT = "COMMIT"
    VOID_CHARGE = "VOID_CHARGE"
    RELEASE = "RELEASE"
    REFUND = "REFUND"
    DONE = "DONE"

    @property
    def compensating(self) -> bool:
        return self in _COMPENSATING


_COMPENSATING = frozenset({Step.VOID_CHARGE, Step.RELEASE, Step.REFUND})


class Outcome(enum.StrEnum):
    """How one step's call ended."""

    OK = "OK"  # it did what was asked
    DECLINED = "DECLINED"  # a business "no": out of stock, payment declined, stock not committed
    REJECTED = "REJECTED"  # a definite error: the call did nothing
    INVALID = "INVALID"  # the request itself is wrong (an unknown SKU): the call did nothing
    NOT_SENT = "NOT_SENT"  # refused before it left this process: the call did nothing
    UNKNOWN = "UNKNOWN"  # no answer: it may or may not have happened


#: Where an order goes after a step ends in an outcome (see the module docstring).
TRANSITIONS: Mapping[tuple[Step, Outcome], Step | Status] = {
    (Step.RESERVE, Outcome.OK): Step.CHARGE,
    (Step.RESERVE, Outcome.DECLINED): Status.FAILED,
    (Step.RESERVE, Outcome.REJECTED): Status.FAILED,
    (Step.RESERVE, Outcome.INVALID): Status.FAILED,
    (Step.RESERVE, Outcome.NOT_SENT): Status.FAILED,
    # The reservation may exist: find it (Reserve is idempotent by order_id) and release it.
    (Step.RESERVE, Outcome.UNKNOWN): Step.RELEASE,
    (Step.CHARGE, Outcome.OK): Step.COMMIT,
    (Step.CHARGE, Outcome.DECLINED): Step.RELEASE,
    (Step.CHARGE, Outcome.REJECTED): Step.RELEASE,
    (Step.CHARGE, Outcome.NOT_SENT): Step.RELEASE,
    # The charge may have been captured, or may still arrive: void it before releasing stock.
    (Step.CHARGE, Outcome.UNKNOWN): Step.VOID_CHARGE,
    (Step.COMMIT, Outcome.OK): Status.CONFIRMED,
    # Commit failed and the stock went back instead: give the money back too.
    (Step.COMMIT, Outcome.DECLINED): Step.REFUND,
    (Step.VOID_CHARGE, Outcome.OK): Step.RELEASE,
    (Step.RELEASE, Outcome.OK): Status.FAILED,
    (Step.REFUND, Outcome.OK): Status.FAILED,
}

# Failure reasons: what a FAILED order says, first failure wins. Each kind is one Reason
# (FAILURE_REASONS), so a persisted order's failure_reason says which class it falls in.
OUT_OF_STOCK = "out of stock"
PAYMENT_DECLINED = "payment declined"
PAYMENT_UNAVAILABLE = "payment unavailable"
PAYMENT_REJECTED = "payment rejected"
INVENTORY_UNAVAILABLE = "inventory unavailable"
INVENTORY_REJECTED = "inventory rejected the order"
INVENTORY_REFUSED_LINES = "inventory refused the lines"
INVENTORY_UNAVAILABLE_AT_COMMIT = "inventory unavailable at commit"


class Reason(enum.StrEnum):
    """Why a saga run left its order where it did, in a few classes (the outcome metric's
    ``reason`` label): the business's own "no", the caller's mistake, or a fault."""

    NONE = "none"  # CONFIRMED
    DECLINED = "declined"  # payment declined the card
    OUT_OF_STOCK = "out_of_stock"
    INVALID = "invalid"  # inventory refused the lines (an unknown SKU)
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"  # no answer: timeout, UNAVAILABLE, ...
    DEPENDENCY_REJECTED = "dependency_rejected"  # an error that is no business answer
    LEASE_LOST = "lease_lost"  # PENDING only: Redis lost (or never confirmed) the saga's lease
    OTHER = "other"  # a failure_reason of no known kind

    @property
    def chosen(self) -> bool:
        """The business (or the caller) decided this end, not a fault of the mesh."""
        return self in _CHOSEN


_CHOSEN = frozenset({Reason.NONE, Reason.DECLINED, Reason.OUT_OF_STOCK, Reason.INVALID})

#: The class of each failure kind above.
FAILURE_REASONS: Mapping[str, Reason] = {
    OUT_OF_STOCK: Reason.OUT_OF_STOCK,
    PAYMENT_DECLINED: Reason.DECLINED,
    PAYMENT_UNAVAILABLE: Reason.DEPENDENCY_UNAVAILABLE,
    PAYMENT_REJECTED: Reason.DEPENDENCY_REJECTED,
    INVENTORY_UNAVAILABLE: Reason.DEPENDENCY_UNAVAILABLE,
    INVENTORY_REJECTED: Reason.DEPENDENCY_REJECTED,
    INVENTORY_REFUSED_LINES: Reason.INVALID,
    # Commit got no answer and the stock went back: a fault, though the step says DECLINED.
    INVENTORY_UNAVAILABLE_AT_COMMIT: Reason.DEPENDENCY_UNAVAILABLE,
}
#: Longest first: "inventory unavailable at commit" before "inventory unavailable".
_FAILURE_KINDS = sorted(FAILURE_REASONS, key=len, reverse=True)

#: Why a step that could not move its order left it PENDING (the outcomes that can).
_STUCK_REASONS: Mapping[Outcome, Reason] = {
    Outcome.UNKNOWN: Reason.DEPENDENCY_UNAVAILABLE,
    Outcome.NOT_SENT: Reason.DEPENDENCY_UNAVAILABLE,
    Outcome.REJECTED: Reason.DEPENDENCY_REJECTED,
}


def failure_class(failure_reason: str) -> Reason:
    """The class of a FAILED order's ``failure_reason``, read from its kind."""
    kind = next((k for k in _FAILURE_KINDS if failure_reason.startswith(k)), None)
    return Reason.OTHER if kind is None else FAILURE_REASONS[kind]


def ending(order: Order, stuck_on: Outcome | None = None) -> Reason:
    """Why a run ended with ``order`` where it is; ``stuck_on``: the outcome of the step
    that could not move a PENDING order."""
    if order.status is Status.CONFIRMED:
        return Reason.NONE
    if order.status is Status.FAILED:
        return failure_class(order.failure_reason)
    if stuck_on is None:
        return Reason.LEASE_LOST
    return _STUCK_REASONS.get(stuck_on, Reason.DEPENDENCY_UNAVAILABLE)


def reason(kind: str, detail: str = "") -> str:
    """``kind: detail``, without repeating the kind when the detail already starts with it."""
    if not detail:
        return kind
    if detail.startswith(kind):
        return detail
    return f"{kind}: {detail}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    """An order as persisted: the request, the saga's position, and what each step produced."""

    order_id: str
    request_id: str
    fingerprint: str
    customer_id: str
    lines: tuple[Line, ...]
    status: Status = Status.PENDING
    step: Step = Step.RESERVE
    failure_reason: str = ""
    reservation_id: str = ""
    payment_id: str = ""
    total: Money | None = None
    create_time_us: int = 0
    update_time_us: int = 0
    #: The fencing token of the last saga write (see order_service.leases); 0 before any.
    fence: int = 0

    @property
    def charge_request_id(self) -> str:
        return f"charge-{self.order_id}"

    @property
    def refund_request_id(self) -> str:
        return f"refund-{self.order_id}"


def new_order(order_id: str, request: NewOrder) -> Order:
    return Order(
        order_id=order_id,
        request_id=request.request_id,
        fingerprint=request.fingerprint,
        customer_id=request.customer_id,
        lines=request.lines,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """What one step's calls produced; ids and total are kept whatever the outcome."""

    outcome: Outcome
    reason: str = ""
    reservation_id: str = ""
    payment_id: str = ""
    total: Money | None = None
    #: For INVALID: what the callee said is wrong with the request, field by field.
    violations: tuple[FieldViolation, ...] = ()


#: Steps the saga starts without saving the order first (see the module docstring).
UNSAVED_STEPS = frozenset({Step.CHARGE})


def must_save(order: Order) -> bool:
    """Whether the saga saves ``order`` (just advanced) before going on."""
    return order.step not in UNSAVED_STEPS


def advance(order: Order, result: StepResult) -> Order:
    """The order after ``result``: pure, so the whole saga's logic can be read and tested here."""
    if order.status is not Status.PENDING:
        raise ValueError(f"{order.order_id} is {order.status}, not PENDING")
    target = TRANSITIONS.get((order.step, result.outcome), order.step)
    failing = target is Status.FAILED or (isinstance(target, Step) and target.compensating)
    if isinstance(target, Step):
        status, step = Status.PENDING, target
    else:  # CONFIRMED or FAILED
        status, step = target, Step.DONE
    return replace(
        order,
        status=status,
        step=step,
        reservation_id=result.reservation_id or order.reservation_id,
        payment_id=result.payment_id or order.payment_id,
        total=result.total or order.total,
        # The first failure is the reason; the compensations that follow keep it.
        failure_reason=order.failure_reason or (result.reason if failing else ""),
    )
