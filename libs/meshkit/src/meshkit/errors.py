"""Domain errors that servicers raise, and their mapping onto gRPC statuses.

Servicers never call ``context.abort`` themselves: they raise one of these and
:class:`ErrorMappingInterceptor` turns it into the status, with a
``google.rpc.BadRequest`` detail for field violations (what grpcurl and
``buf curl`` print as the error's details). Anything else that escapes a
handler becomes INTERNAL with a generic message, so no traceback reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: its path in the request (``lines[2].quantity``) and what is wrong."""

    field: str
    description: str


class MeshError(Exception):
    """Base of the errors that map onto a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message)


class InvalidArgument(MeshError):
    """The request itself is wrong, whatever the system's state."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])

    def to_status(self) -> status_pb2.Status:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
        )
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=self.message, details=[detail]
        )


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


class Validator:
    """Collects field violations so one response names every bad field, not just the first."""

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    @property
    def ok(self) -> bool:
        return not self._violations

    def raise_if_invalid(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)


Handler = Callable[[Any, grpc.ServicerContext], Any]


def _abort_with(context: grpc.ServicerContext, status: status_pb2.Status) -> None:
    context.abort_with_status(rpc_status.to_status(status))


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Maps :class:`MeshError` to its status and hides unexpected exceptions behind INTERNAL."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour: Handler = handler.unary_unary
        method = handler_call_details.method

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behaviour(request, context)
            except MeshError as error:
                _abort_with(context, error.to_status())
            except Exception as error:
                # context.abort() raises a bare Exception after setting the status; let it through.
                if context.code() is not None and context.code() is not grpc.StatusCode.OK:
                    raise
                _log.exception("unhandled error in %s", method)
                _abort_with(
                    context,
                    status_pb2.Status(
                        code=code_pb2.INTERNAL, message=f"internal error ({type(error).__name__})"
                    ),
                )
            return None  # unreachable: abort raises

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
