"""The saga orchestrator: Reserve -> Charge -> Commit, compensating what was done on failure.

Each step is one method that makes its call(s) and reports a :class:`domain.StepResult`;
:func:`domain.advance` decides where that leads, and the new position is saved before the
next step runs unless :func:`domain.must_save` says a rerun would find it again. Written
against the ports in :mod:`order_service.ports`, not against grpc.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshkit import logs, tracing
from meshkit.errors import FieldViolation
from order_service import domain
from order_service.domain import Order, Outcome, Reason, Status, Step, StepResult
from order_service.ports import FencedOut, Inventory, Lease, Payments, RemoteError, Store

_log = logging.getLogger(__name__)

#: Each step is a span (saga.reserve, saga.void_charge, ...) around the calls it makes.
_SPAN_NAMES = {step: f"saga.{step.value.lower()}" for step in Step}


@dataclass(frozen=True, slots=True)
class Run:
    """Where a run of the saga left its order."""

    order: Order
    #: Why the run ended there (the outcome metric's reason label).
    reason: Reason
    #: Set when the order FAILED because inventory refused its lines (Outcome.INVALID).
    invalid: tuple[FieldViolation, ...] = ()
    #: For a run that left its order stuck at a step: how that step's call ended, and its error.
    stuck_on: Outcome | None = None
    error: str = ""


#: The forward steps a run that did not create the order may be repeating: one that crashed
#: may have sent their call before, so this run's call never being sent proves nothing.
_FIRST_SENT = frozenset({Step.RESERVE, Step.CHARGE})


class Saga:
    """Drives one order from its persisted step until it is CONFIRMED, FAILED or stuck."""

    def __init__(self, store: Store, inventory: Inventory, payments: Payments) -> None:
        self._store = store
        self._inventory = inventory
        self._payments = payments
        self._steps: dict[Step, Callable[[Order], StepResult]] = {
            Step.RESERVE: self._reserve,
            Step.CHARGE: self._charge,
            Step.COMMIT: self._commit,
            Step.VOID_CHARGE: self._void_charge,
            Step.RELEASE: self._release,
            Step.REFUND: self._refund,
        }

    def run(self, order: Order, lease: Lease, *, creating: bool = False) -> Run:
        """Runs steps while the order moves; ends with it CONFIRMED, FAILED or still PENDING.

        It stays PENDING when a step cannot make progress now (a compensation could not
        reach its service) or the lease was lost; the recovery loop picks it up later. A
        write the store refuses for its old fencing token ends the run at once, as a lost
        lease: another runner has the order, and nothing more is called.
        ``creating`` is for the request that created the order, the one run that knows no
        Reserve or Charge of it was sent before: one the resilience library refused then counts
        as not done (a later run treats it as unknown: an earlier run may have sent it). And
        when inventory refuses its lines, the order is deleted instead of saved FAILED, so
        that request (and its duplicates, which find no order) can answer INVALID_ARGUMENT.
        Recovery keeps the FAILED order: its id may have been seen.
        """
        # Every line logged while it runs, the saga's and the libraries', names the order.
        with logs.context(order_id=order.order_id):
            return self._run(order, lease, creating=creating)

    def _run(self, order: Order, lease: Lease, *, creating: bool) -> Run:
        result: StepResult | None = None
        while order.status is Status.PENDING:
            if not lease.keep():
                _log.warning("%s: lease lost at %s", order.order_id, order.step)
                return Run(order, domain.ending(order))
            step = order.step
            with tracing.span(_SPAN_NAMES[step], {"order.id": order.order_id}) as span:
                result = self._steps[step](order)
                if result.outcome is Outcome.NOT_SENT and step in _FIRST_SENT and not creating:
                    # An earlier run may have sent this call (RESERVE and CHARGE run again after
                    # a crash, CHARGE unsaved): what that one did is unknown.
                    result = replace(result, outcome=Outcome.UNKNOWN)
                span.set_attribute("saga.outcome", result.outcome.value)
            moved = domain.advance(order, result)
            try:
                if creating and result.outcome is Outcome.INVALID:
                    self._store.delete(order.order_id, fence=lease.fence)
                    return Run(moved, domain.ending(moved), result.violations)
                if moved != order:  # also keeps ids a stuck step learnt, e.g. a reservation_id
                    if domain.must_save(moved):
                        order = self._store.save(moved, fence=lease.fence)
                    else:
                        order = moved
            except FencedOut as error:
                _log.warning("%s: lease lost after %s: %s", order.order_id, step, error)
                return Run(order, Reason.LEASE_LOST)
            if moved.status is Status.PENDING and moved.step == step:
                _log.warning("%s: stuck at %s: %s", order.order_id, step, result.reason)
                why = domain.ending(order, stuck_on=result.outcome)
                return Run(order, why, stuck_on=result.outcome, error=result.reason)
            _log.debug("%s: %s %s -> %s", order.order_id, step, result.outcome, order.step)
        # A confirmed order logs nothing above DEBUG: at load, a line per order costs this
        # process and supervisord (which copies every line to the log file) more than the
        # saga's own Redis work. A failure is rarer, and its reason worth a line.
        if order.status is Status.FAILED:
            _log.info("%s: FAILED: %s", order.order_id, order.failure_reason)
        return Run(order, domain.ending(order), () if result is None else result.violations)

    # --- forward steps ---------------------------------------------------------------------

    def _reserve(self, order: Order) -> StepResult:
        try:
            reservation = self._inventory.reserve(order.order_id, order.lines)
        except RemoteError as error:
            if error.code == "INVALID_ARGUMENT":
                return StepResult(
                    outcome=Outcome.INVALID,
                    reason=domain.reason(domain.INVENTORY_REFUSED_LINES, error.message),
                    violations=error.violations or (FieldViolation("lines", error.message),),
                )
            if error.code == "FAILED_PRECONDITION":
                return _failed(Outcome.DECLINED, domain.OUT_OF_STOCK, error.message)
            return _error(
                error, rejected=domain.INVENTORY_REJECTED, unknown=domain.INVENTORY_UNAVAILABLE
            )
        if reservation.state != "RESERVED":
            # Only a compensation releases this order's reservation, and that never runs
            # before RESERVE has finished; treat it as nothing held.
            return _failed(
                Outcome.REJECTED, domain.INVENTORY_REJECTED, f"reservation {reservation.state}"
            )
        return StepResult(
            outcome=Outcome.OK,
            reservation_id=reservation.reservation_id,
            total=reservation.total,
        )

    def _charge(self, order: Order) -> StepResult:
        if order.total is None:
            raise ValueError(f"{order.order_id}: CHARGE without a total")
        try:
            payment = self._payments.charge(
                order_id=order.order_id,
                customer_id=order.customer_id,
                amount=order.total,
                request_id=order.charge_request_id,
            )
        except RemoteError as error:
            return _error(
                error, rejected=domain.PAYMENT_REJECTED, unknown=domain.PAYMENT_UNAVAILABLE
            )
        if payment.state == "CAPTURED":
            return StepResult(outcome=Outcome.OK, payment_id=payment.payment_id)
        if payment.state == "DECLINED":
            # Keep the payment's id: the declined charge is part of the order's story.
            return replace(
                _failed(Outcome.DECLINED, domain.PAYMENT_DECLINED, payment.decline_reason),
                payment_id=payment.payment_id,
            )
        # VOIDED/REFUNDED: an earlier run of this saga already gave up on this charge.
        return _failed(Outcome.REJECTED, domain.PAYMENT_REJECTED, f"charge {payment.state}")

    def _commit(self, order: Order) -> StepResult:
        try:
            self._inventory.commit(order.reservation_id)
        except RemoteError as error:
            if not error.sent:  # nothing happened: try the Commit again later, not a Release
                return StepResult(outcome=Outcome.NOT_SENT, reason=str(error))
            _log.warning("%s: commit failed (%s); releasing instead", order.order_id, error)
        else:
            return StepResult(outcome=Outcome.OK)
        # The commit may or may not have happened; Release settles which.
        try:
            reservation = self._inventory.release(order.reservation_id)
        except RemoteError as error:
            if error.code == "FAILED_PRECONDITION":  # "already committed": the commit did happen
                return StepResult(outcome=Outcome.OK)
            return StepResult(outcome=error_outcome(error), reason=str(error))
        if reservation.state == "COMMITTED":
            return StepResult(outcome=Outcome.OK)
        return StepResult(outcome=Outcome.DECLINED, reason=domain.INVENTORY_UNAVAILABLE_AT_COMMIT)

    # --- compensations: any error leaves the order at its step for a later retry -------------

    def _void_charge(self, order: Order) -> StepResult:
        try:
            payment = self._payments.void_charge(
                charge_request_id=order.charge_request_id, order_id=order.order_id
            )
        except RemoteError as error:
            return StepResult(outcome=error_outcome(error), reason=str(error))
        # The voided (or refunded) payment record stays linked, so GetPayment shows what happened.
        return StepResult(outcome=Outcome.OK, payment_id=payment.payment_id)

    def _release(self, order: Order) -> StepResult:
        reservation_id = order.reservation_id
        if not reservation_id:
            # Reserve's outcome was unknown: asking again (idempotent by order_id) returns the
            # reservation if it exists, or makes one we then release at once.
            try:
                reservation_id = self._inventory.reserve(order.order_id, order.lines).reservation_id
            except RemoteError as error:
                if error.sent and error.definite:  # out of stock or invalid: nothing is held
                    return StepResult(outcome=Outcome.OK)
                return StepResult(outcome=error_outcome(error), reason=str(error))
        try:
            self._inventory.release(reservation_id)
        except RemoteError as error:
            return StepResult(
                outcome=error_outcome(error), reason=str(error), reservation_id=reservation_id
            )
        return StepResult(outcome=Outcome.OK, reservation_id=reservation_id)

    def _refund(self, order: Order) -> StepResult:
        try:
            self._payments.refund(payment_id=order.payment_id, request_id=order.refund_request_id)
        except RemoteError as error:
            if error.code == "FAILED_PRECONDITION":  # not captured: there is nothing to give back
                return StepResult(outcome=Outcome.OK)
            return StepResult(outcome=error_outcome(error), reason=str(error))
        return StepResult(outcome=Outcome.OK)


def error_outcome(error: RemoteError) -> Outcome:
    if not error.sent:
        return Outcome.NOT_SENT
    return Outcome.REJECTED if error.definite else Outcome.UNKNOWN


def _failed(outcome: Outcome, kind: str, detail: str) -> StepResult:
    return StepResult(outcome=outcome, reason=domain.reason(kind, detail))


def _error(error: RemoteError, *, rejected: str, unknown: str) -> StepResult:
    if not error.sent:  # "unavailable", as the open breaker (or full bulkhead) says
        return _failed(Outcome.NOT_SENT, unknown, error.message)
    if error.definite:
        return _failed(Outcome.REJECTED, rejected, f"{error.code}: {error.message}")
    return _failed(Outcome.UNKNOWN, unknown, error.code)
