"""Outbound calls: the one place channels to other services are made, and the stubs on them.

Every call carries a deadline. Errors leave here as :class:`RemoteError`: the status code's
name, message and field violations, and whether the callee certainly did nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import resilience
from mesh.common.v1 import money_pb2
from mesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshkit import tracing
from meshkit.errors import FieldViolation
from order_service.domain import Line, Money
from order_service.ports import Payment, RemoteError, Reservation

#: Codes after which the callee has certainly done nothing: those the resilience library never
#: retries, but DATA_LOSS, which no retry mends yet says nothing of what was done before it.
DEFINITE_CODES = resilience.NEVER_RETRYABLE - {"DATA_LOSS"}

#: Keepalive notices a dead peer between calls; a short reconnect backoff (default max 120 s)
#: lets the recovery loop get through soon after a restarted Envoy or service is back.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)


#: The target label of the pipeline that carries a dependency's compensating calls.
COMPENSATIONS_SUFFIX = "-compensations"


@dataclass(frozen=True, slots=True)
class Lanes:
    """Two resilience pipelines over one connection to a dependency.

    ``forward`` carries the saga's forward steps, ``compensations`` the calls that undo them
    (Release, VoidCharge, Refund): each lane has its own retry budget, bulkhead and breakers,
    so a forward path that spends the budget, fills the bulkhead or opens a breaker on a sick
    dependency never starves the calls that put things right. ``connection`` is what to close.
    """

    forward: grpc.Channel
    compensations: grpc.Channel
    connection: grpc.Channel


def open_lanes(
    address: str,
    *,
    target: str,
    policy: resilience.ClientPolicy,
    credentials: grpc.ChannelCredentials | None = None,
    listeners: Sequence[resilience.Listener] = (),
) -> Lanes:
    """The lanes to ``address`` (Envoy's internal listener by default) for the logical
    ``target`` ("inventory"), over mTLS when ``credentials`` are given.

    Every outbound channel is made here, and every one runs the resilience pipeline: bulkhead,
    deadline, retry with budget, circuit breaker, per-attempt timeout (libs/resilience). When
    tracing is on, each call is a span with a CLIENT span per attempt under it, whose context
    the channel the pipeline wraps sends as the request's traceparent. The compensations
    lane's metrics carry the target ``<target>-compensations``.
    """
    connection = (
        grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    )
    traced = tracing.instrument_channel(connection)

    def lane(name: str) -> grpc.Channel:
        pipeline = tracing.pipeline(target=name, policy=policy, listeners=listeners)
        return resilience.intercept_channel(traced, pipeline)

    return Lanes(lane(target), lane(target + COMPENSATIONS_SUFFIX), connection)


_Response = TypeVar("_Response")


def _call(method: Callable[..., _Response], request: Any, timeout_s: float) -> _Response:
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as error:
        raise _remote_error(error) from None


def _remote_error(error: grpc.RpcError) -> RemoteError:
    code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    violations: list[FieldViolation] = []
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # inconsistent status metadata: keep the plain code and message
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return RemoteError(
        code.name,
        message or "",
        tuple(violations),
        definite=code.name in DEFINITE_CODES,
        sent=not resilience.never_sent(error),
    )


def _money(money: money_pb2.Money) -> Money:
    return Money(money.currency_code, money.amount_minor)


class GrpcInventory:
    """InventoryService as the saga sees it; Release goes by the compensations lane."""

    def __init__(self, lanes: Lanes, timeout_s: float) -> None:
        self._stub = inventory_pb2_grpc.InventoryServiceStub(lanes.forward)
        self._undo = inventory_pb2_grpc.InventoryServiceStub(lanes.compensations)
        self._timeout_s = timeout_s

    def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        request = inventory_pb2.ReserveRequest(
            order_id=order_id,
            lines=[money_pb2.Line(sku=ln.sku, quantity=ln.quantity) for ln in lines],
        )
        return _reservation(_call(self._stub.Reserve, request, self._timeout_s))

    def commit(self, reservation_id: str) -> Reservation:
        request = inventory_pb2.CommitRequest(reservation_id=reservation_id)
        return _reservation(_call(self._stub.Commit, request, self._timeout_s))

    def release(self, reservation_id: str) -> Reservation:
        request = inventory_pb2.ReleaseRequest(reservation_id=reservation_id)
        return _reservation(_call(self._undo.Release, request, self._timeout_s))


#: Enum numbers to the ports' state names (RESERVED, ...), worked out once, not per reply.
_RESERVATION_STATES = {
    value.number: value.name.removeprefix("RESERVATION_STATE_")
    for value in inventory_pb2.ReservationState.DESCRIPTOR.values
}


def _reservation(reply: inventory_pb2.Reservation) -> Reservation:
    return Reservation(
        reservation_id=reply.reservation_id,
        state=_RESERVATION_STATES[reply.state],
        total=_money(reply.total) if reply.HasField("total") else None,
    )


class GrpcPayments:
    """PaymentService as the saga sees it; VoidCharge and Refund go by the compensations lane."""

    def __init__(self, lanes: Lanes, timeout_s: float) -> None:
        self._stub = payment_pb2_grpc.PaymentServiceStub(lanes.forward)
        self._undo = payment_pb2_grpc.PaymentServiceStub(lanes.compensations)
        self._timeout_s = timeout_s

    def charge(self, *, order_id: str, customer_id: str, amount: Money, request_id: str) -> Payment:
        request = payment_pb2.ChargeRequest(
            order_id=order_id,
            customer_id=customer_id,
            amount=money_pb2.Money(
                currency_code=amount.currency_code, amount_minor=amount.amount_minor
            ),
            request_id=request_id,
        )
        return _payment(_call(self._stub.Charge, request, self._timeout_s))

    def void_charge(self, *, charge_request_id: str, order_id: str) -> Payment:
        request = payment_pb2.VoidChargeRequest(
            charge_request_id=charge_request_id, order_id=order_id
        )
        return _payment(_call(self._undo.VoidCharge, request, self._timeout_s))

    def refund(self, *, payment_id: str, request_id: str) -> Payment:
        request = payment_pb2.RefundRequest(payment_id=payment_id, request_id=request_id)
        return _payment(_call(self._undo.Refund, request, self._timeout_s))


_PAYMENT_STATES = {
    value.number: value.name.removeprefix("PAYMENT_STATE_")
    for value in payment_pb2.PaymentState.DESCRIPTOR.values
}


def _payment(reply: payment_pb2.Payment) -> Payment:
    return Payment(
        payment_id=reply.payment_id,
        state=_PAYMENT_STATES[reply.state],
        decline_reason=reply.decline_reason,
    )
