"""Outbound calls: the one place channels to other services are made, and the stubs on them.

Every call carries a deadline. Errors leave here as :class:`RemoteError`: the status code's
name, message and field violations, and whether the callee certainly did nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def open_channel(
    address: str,
    *,
    target: str,
    policy: resilience.ClientPolicy,
    credentials: grpc.ChannelCredentials | None = None,
    listeners: Sequence[resilience.Listener] = (),
) -> grpc.Channel:
    """A channel to ``address`` (Envoy's internal listener by default) for the logical
    ``target`` ("inventory"), over mTLS when ``credentials`` are given.

    Every outbound channel is made here, and every one runs the resilience pipeline: bulkhead,
    deadline, retry with budget, circuit breaker, per-attempt timeout (libs/resilience). When
    tracing is on, each call is a span with one child per attempt, over that attempt's CLIENT
    span from the traced channel the pipeline wraps.
    """
    channel = (
        grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    )
    return resilience.intercept_channel(
        tracing.instrument_channel(channel),
        tracing.pipeline(target=target, policy=policy, listeners=listeners),
    )


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
        code.name, message or "", tuple(violations), definite=code.name in DEFINITE_CODES
    )


def _money(money: money_pb2.Money) -> Money:
    return Money(money.currency_code, money.amount_minor)


class GrpcInventory:
    """InventoryService as the saga sees it."""

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = inventory_pb2_grpc.InventoryServiceStub(channel)
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
        return _reservation(_call(self._stub.Release, request, self._timeout_s))


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
    """PaymentService as the saga sees it."""

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = payment_pb2_grpc.PaymentServiceStub(channel)
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
        return _payment(_call(self._stub.VoidCharge, request, self._timeout_s))

    def refund(self, *, payment_id: str, request_id: str) -> Payment:
        request = payment_pb2.RefundRequest(payment_id=payment_id, request_id=request_id)
        return _payment(_call(self._stub.Refund, request, self._timeout_s))


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
