"""PaymentService over gRPC: protobuf in, domain rules and the store, protobuf out."""

from __future__ import annotations

import grpc

from mesh.common.v1 import money_pb2
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshkit.errors import MeshError

from . import domain
from .domain import Money, Payment, PaymentState
from .faults import LiveFaults
from .store import PaymentStore

_STATES = {
    PaymentState.CAPTURED: payment_pb2.PAYMENT_STATE_CAPTURED,
    PaymentState.DECLINED: payment_pb2.PAYMENT_STATE_DECLINED,
    PaymentState.REFUNDED: payment_pb2.PAYMENT_STATE_REFUNDED,
    PaymentState.VOIDED: payment_pb2.PAYMENT_STATE_VOIDED,
}


class InjectedFault(MeshError):
    """The failure PAYMENT_FAULT_RATE (or the live fault file) asks for, with its status."""

    def __init__(self, code: grpc.StatusCode, source: str) -> None:
        super().__init__(f"injected fault ({source})")
        self.code = code


def to_proto(payment: Payment) -> payment_pb2.Payment:
    return payment_pb2.Payment(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        amount=money_pb2.Money(
            currency_code=payment.amount.currency_code,
            amount_minor=payment.amount.amount_minor,
        ),
        state=_STATES[payment.state],
        version=payment.version,
        customer_id=payment.customer_id,
        decline_reason=payment.decline_reason,
    )


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, store: PaymentStore, faults: LiveFaults) -> None:
        self._store = store
        self._faults = faults

    def Charge(  # noqa: N802  # gRPC method names come from the proto
        self, request: payment_pb2.ChargeRequest, context: grpc.ServicerContext
    ) -> payment_pb2.Payment:
        # Faults come first, before validation or any I/O: the demo wants a sick service,
        # and compensation (VoidCharge, Refund) stays healthy while Charge is failing.
        faults = self._faults.current()
        if faults.policy.strikes():
            raise InjectedFault(faults.code, faults.source)
        charge = domain.ChargeRequest(
            order_id=request.order_id,
            customer_id=request.customer_id,
            amount=Money(request.amount.currency_code, request.amount.amount_minor),
            request_id=request.request_id,
        )
        domain.validate_charge(charge)
        return to_proto(self._store.charge(charge))

    def Refund(  # noqa: N802  # gRPC method names come from the proto
        self, request: payment_pb2.RefundRequest, context: grpc.ServicerContext
    ) -> payment_pb2.Payment:
        domain.validate_refund(request.payment_id, request.request_id)
        return to_proto(self._store.refund(request.payment_id, request.request_id))

    def GetPayment(  # noqa: N802  # gRPC method names come from the proto
        self, request: payment_pb2.GetPaymentRequest, context: grpc.ServicerContext
    ) -> payment_pb2.Payment:
        domain.validate_get(request.payment_id)
        return to_proto(self._store.get(request.payment_id))

    def VoidCharge(  # noqa: N802  # gRPC method names come from the proto
        self, request: payment_pb2.VoidChargeRequest, context: grpc.ServicerContext
    ) -> payment_pb2.Payment:
        domain.validate_void(request.charge_request_id, request.order_id)
        return to_proto(self._store.void(request.charge_request_id, request.order_id))
