"""ErrorMappingInterceptor on a real server: statuses, BadRequest details, no tracebacks."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from meshkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Validator,
)
from meshkit.server import RunningServer, ServerOptions, build_server

_SERVICE = "test.Raiser"


def _raiser(request: bytes, context: grpc.ServicerContext) -> bytes:
    kind = request.decode()
    if kind == "invalid":
        validator = Validator()
        validator.add("lines[0].quantity", "must be >= 1, got 0")
        validator.add("customer_id", "is required")
        validator.raise_if_invalid()
    if kind == "not_found":
        raise NotFound("order ord_x not found")
    if kind == "exists":
        raise AlreadyExists("request_id r1 was used with a different request")
    if kind == "precondition":
        raise FailedPrecondition("out of stock")
    if kind == "bug":
        raise KeyError("secret internals")
    if kind == "abort":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
    return b"ok"


def _register(server: grpc.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Raise": grpc.unary_unary_rpc_method_handler(_raiser)}
    )
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    server = build_server(
        ServerOptions(port=0, grace_s=0),
        service_names=[_SERVICE],
        registrations=[_register],
        checks={},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def call(running: RunningServer) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel.unary_unary(f"/{_SERVICE}/Raise")


def _error(call: grpc.UnaryUnaryMultiCallable, kind: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(kind.encode(), timeout=5)
    return caught.value


def test_invalid_argument_names_every_field_and_carries_bad_request(
    call: grpc.UnaryUnaryMultiCallable,
) -> None:
    error = _error(call, "invalid")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "lines[0].quantity: must be >= 1" in error.details()
    assert "customer_id: is required" in error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["lines[0].quantity", "customer_id"]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("not_found", grpc.StatusCode.NOT_FOUND),
        ("exists", grpc.StatusCode.ALREADY_EXISTS),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("abort", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_domain_errors_map_to_their_status(
    call: grpc.UnaryUnaryMultiCallable, kind: str, code: grpc.StatusCode
) -> None:
    assert _error(call, kind).code() is code


def test_unexpected_exception_is_internal_without_internals(
    call: grpc.UnaryUnaryMultiCallable,
) -> None:
    error = _error(call, "bug")
    assert error.code() is grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (KeyError)"
    assert "secret" not in error.details()


def test_success_passes_through(call: grpc.UnaryUnaryMultiCallable) -> None:
    assert call(b"fine", timeout=5) == b"ok"


def test_health_serves_each_registered_name(running: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        for name in ("", _SERVICE):
            response = check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_invalid_argument_requires_a_violation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        InvalidArgument([])
