"""Domain errors that servicers raise, and their mapping onto gRPC statuses.

Servicers never call ``context.abort`` themselves: they raise one of these and
:class:`ErrorMappingInterceptor` turns it into the status, with a
``google.rpc.BadRequest`` detail for field violations (what grpcurl and
``buf curl`` print as the error's details). Anything else that escapes a
handler becomes INTERNAL with a generic message, so no traceback reaches a client.

An error's size never depends on the request: it lists at most
:data:`~meshkit.limits.MAX_FIELD_VIOLATIONS` violations, echoes client values only
through :func:`shown`, and every text is clipped (see :mod:`meshkit.limits`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from meshkit.limits import (
    MAX_DESCRIPTION_BYTES,
    MAX_FIELD_BYTES,
    MAX_FIELD_VIOLATIONS,
    MAX_STATUS_MESSAGE_BYTES,
    SHOWN_VALUE_CHARS,
)

_log = logging.getLogger(__name__)

#: Marks where a text was cut; ASCII, so it costs one byte per character on the wire.
_CUT = "..."
#: The field of the violation that counts the ones not listed, and of an undecodable request.
REQUEST_FIELD = "request"


def shown(value: str) -> str:
    """A client's value as an error may echo it: an ASCII repr of at most
    :data:`~meshkit.limits.SHOWN_VALUE_CHARS` characters, ``...`` after it when cut."""
    head = value[:SHOWN_VALUE_CHARS]
    text = ascii(head)
    # ascii() turns a control or non-ASCII character into an escape of up to 10 characters.
    while len(text) > SHOWN_VALUE_CHARS + 2:
        head = head[:-1]
        text = ascii(head)
    return text if len(head) == len(value) else text + _CUT


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, ending in ``...`` where it was cut."""
    # No character is shorter than a byte, so the characters past max_bytes can only be cut.
    encoded = text[: max_bytes + 1].encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return encoded.decode()
    return encoded[: max_bytes - len(_CUT)].decode("utf-8", "ignore") + _CUT


def trailer_bytes(message: str, status_bin: bytes) -> int:
    """What an error's grpc-message and grpc-status-details-bin take on the wire, at most.

    grpc-message is percent-encoded (a byte outside printable ASCII, or ``%``, takes three)
    and the serialized ``google.rpc.Status`` goes as base64; this is what
    :data:`~meshkit.limits.ERROR_TRAILER_BUDGET_BYTES` bounds.
    """
    encoded = sum(
        1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3
        for byte in message.encode("utf-8", "replace")
    )
    return encoded + 4 * -(-len(status_bin) // 3)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: its path in the request (``lines[2].quantity``) and what is wrong."""

    field: str
    description: str


class MeshError(Exception):
    """Base of the errors that map onto a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        self.message = clip(message, MAX_STATUS_MESSAGE_BYTES)
        super().__init__(self.message)

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with the status besides its details."""
        return ()


class InvalidArgument(MeshError):
    """The request itself is wrong, whatever the system's state.

    Lists the first :data:`~meshkit.limits.MAX_FIELD_VIOLATIONS` violations and counts the
    rest in ``omitted``; the BadRequest detail ends with one ``request`` entry saying how many.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[FieldViolation], *, omitted: int = 0) -> None:
        listed: list[FieldViolation] = []
        for violation in violations:
            if len(listed) < MAX_FIELD_VIOLATIONS:
                listed.append(
                    FieldViolation(
                        clip(violation.field, MAX_FIELD_BYTES),
                        clip(violation.description, MAX_DESCRIPTION_BYTES),
                    )
                )
            else:
                omitted += 1
        if not listed:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = tuple(listed)
        self.omitted = omitted
        super().__init__(_summary(self.violations, omitted))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])

    def to_status(self) -> status_pb2.Status:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in self.violations
        ]
        if self.omitted:
            violations.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field=REQUEST_FIELD, description=f"and {self.omitted} more not listed"
                )
            )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=self.message, details=[detail]
        )


def _summary(violations: tuple[FieldViolation, ...], omitted: int) -> str:
    """``field: description; ...`` for as many as fit the message, then ``and N more``."""
    # Room for "; and <count> more" however many are left out.
    budget = MAX_STATUS_MESSAGE_BYTES - len(f"; and {len(violations) + omitted} more")
    parts: list[str] = []
    used = 0
    for violation in violations:
        part = f"{violation.field}: {violation.description}"
        cost = len(part.encode()) + (2 if parts else 0)
        if parts and used + cost > budget:
            break
        parts.append(part)
        used += cost
    left = len(violations) - len(parts) + omitted
    return "; ".join(parts) + (f"; and {left} more" if left else "")


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE


#: gRFC A6's server pushback: how long a client should wait before it tries again.
PUSHBACK_HEADER = "grpc-retry-pushback-ms"


class ResourceExhausted(MeshError):
    """Over a limit for now: try again after ``retry_after_s``.

    The status carries ``google.rpc.RetryInfo`` (what grpcurl prints and other clients read)
    and the ``grpc-retry-pushback-ms`` trailer, which gRPC's own retries and this mesh's
    resilience library honour in place of their backoff.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_ms = max(0, round(retry_after_s * 1000))

    def to_status(self) -> status_pb2.Status:
        status = super().to_status()
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(self.retry_after_ms)
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
        return status

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((PUSHBACK_HEADER, str(self.retry_after_ms)),)


class Validator:
    """Collects field violations so one response names every bad field, not just the first.

    Keeps the first :data:`~meshkit.limits.MAX_FIELD_VIOLATIONS` and counts the rest, so a
    request with thousands of bad lines costs no more memory than one with ten.
    """

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []
        self._omitted = 0

    def add(self, field: str, description: str) -> None:
        if len(self._violations) < MAX_FIELD_VIOLATIONS:
            self._violations.append(FieldViolation(field, description))
        else:
            self._omitted += 1

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    @property
    def ok(self) -> bool:
        return not self._violations

    def raise_if_invalid(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations, omitted=self._omitted)


Handler = Callable[[Any, grpc.ServicerContext], Any]


def _abort_with(
    context: grpc.ServicerContext,
    status: status_pb2.Status,
    trailing_metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    answer = rpc_status.to_status(status)
    if trailing_metadata:  # a namedtuple: the status details' trailer, plus these
        answer = answer._replace(trailing_metadata=answer.trailing_metadata + trailing_metadata)
    context.abort_with_status(answer)


def abort(context: grpc.ServicerContext, error: MeshError) -> None:
    """Ends the call with ``error``'s status (raises, as ``context.abort`` does)."""
    _abort_with(context, error.to_status(), error.trailing_metadata())


class _Undecodable:
    """Stands for a request whose bytes did not parse."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning a sentinel where it would raise.

    grpcio answers a raising deserializer with INTERNAL and logs a traceback; bytes that are
    not the request message (or hold invalid UTF-8 in a string) are the client's mistake.
    """
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # whatever the parser raises, it was these bytes it could not parse
            return _UNDECODABLE

    return deserialize


def _refuse_undecodable(
    context: grpc.ServicerContext, handler: grpc.RpcMethodHandler, method: str
) -> None:
    """Aborts with ``request: is not a valid mesh.order.v1.CreateOrderRequest``."""
    # A generated deserializer is the message class's FromString, bound to the class.
    message_class = getattr(handler.request_deserializer, "__self__", None)
    full_name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", None)
    name = full_name if isinstance(full_name, str) else f"request for {method}"
    _abort_with(context, InvalidArgument.field(REQUEST_FIELD, f"is not a valid {name}").to_status())


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Maps :class:`MeshError` to its status and hides unexpected exceptions behind INTERNAL.

    Requests whose bytes do not parse are INVALID_ARGUMENT (field ``request``) for every
    kind of method, before any handler runs.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = _lenient(handler.request_deserializer)
        if handler.unary_unary is None:
            return _guard_streaming(handler, deserializer, method)
        behaviour: Handler = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _UNDECODABLE:
                _refuse_undecodable(context, handler, method)
            try:
                return behaviour(request, context)
            except MeshError as error:
                abort(context, error)
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
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )


def _guard_streaming(
    handler: grpc.RpcMethodHandler, deserializer: Callable[[bytes], Any] | None, method: str
) -> grpc.RpcMethodHandler:
    """The same handler, answering INVALID_ARGUMENT for a request (or a streamed one) that
    does not parse. Errors inside streams are the handler's own business."""
    if handler.unary_stream is not None:
        streams: Handler = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _UNDECODABLE:
                _refuse_undecodable(context, handler, method)
            return streams(request, context)

        return handler._replace(request_deserializer=deserializer, unary_stream=unary_stream)

    def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        for request in requests:
            if request is _UNDECODABLE:
                _refuse_undecodable(context, handler, method)
            yield request

    if handler.stream_unary is not None:
        consumes: Handler = handler.stream_unary
        return handler._replace(
            request_deserializer=deserializer,
            stream_unary=lambda requests, context: consumes(checked(requests, context), context),
        )
    both: Handler = handler.stream_stream
    return handler._replace(
        request_deserializer=deserializer,
        stream_stream=lambda requests, context: both(checked(requests, context), context),
    )
