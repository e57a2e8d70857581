"""ErrorMappingInterceptor on a real server: statuses, BadRequest details, no tracebacks,
and errors whose size never depends on what the client sent."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MeshError,
    NotFound,
    Validator,
    shown,
    trailer_bytes,
)
from meshkit.limits import (
    ERROR_TRAILER_BUDGET_BYTES,
    MAX_FIELD_VIOLATIONS,
    MAX_RECEIVE_MESSAGE_BYTES,
    MAX_STATUS_MESSAGE_BYTES,
    SHOWN_VALUE_CHARS,
)
from meshkit.server import RunningServer, ServerOptions, build_server

_SERVICE = "test.Raiser"
#: Longest result of shown(): the quotes and the "..." around SHOWN_VALUE_CHARS.
_SHOWN_MAX = SHOWN_VALUE_CHARS + 2 + 3


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
    if kind.startswith("lines:"):
        validator = Validator()
        for index in range(int(kind.removeprefix("lines:"))):
            validator.add(f"lines[{index}].sku", f"must be a SKU, got {shown('%' * 100)}")
        validator.raise_if_invalid()
    if kind == "huge":
        raise NotFound("order " + "\u00e9" * 100_000 + " not found")
    return b"ok"


def _typed(request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> bytes:
    return request.service.encode()


def _register(server: grpc.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Raise": grpc.unary_unary_rpc_method_handler(_raiser),
            "Typed": grpc.unary_unary_rpc_method_handler(
                _typed, request_deserializer=health_pb2.HealthCheckRequest.FromString
            ),
        },
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


@pytest.fixture(scope="module")
def channel(running: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield channel


def _error(call: grpc.UnaryUnaryMultiCallable, kind: str | bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(kind.encode() if isinstance(kind, str) else kind, timeout=5)
    return caught.value


def _wire_bytes(error: grpc.RpcError) -> int:
    details_bin = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    return trailer_bytes(error.details() or "", details_bin)


def _bad_request(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [(v.field, v.description) for v in bad_request.field_violations]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.exc_info]


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


# --- bounded errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "A" * 100_000,
        "\x00\n\r\x1b" * 50,
        "\U0001f600" * 40,
        "é" * 33,
        "'\"\\" * 20,
        "%" * 1000,
    ],
)
def test_shown_is_a_short_ascii_repr_marked_where_cut(value: str) -> None:
    text = shown(value)
    assert text.isascii()
    assert len(text) <= _SHOWN_MAX
    assert text.endswith("...")


@pytest.mark.parametrize("value", ["", "SKU-0001", "alice\n", "x" * SHOWN_VALUE_CHARS])
def test_shown_leaves_a_short_value_as_its_repr(value: str) -> None:
    assert shown(value) == ascii(value)


@given(st.text(max_size=200))
def test_shown_is_always_bounded_and_a_prefix_when_cut(value: str) -> None:
    text = shown(value)
    assert text.isascii()
    assert len(text) <= _SHOWN_MAX
    if text.endswith("...") and text != ascii(value):
        head = eval(text.removesuffix("..."))  # noqa: S307  an ascii() repr of a prefix
        assert value.startswith(head)
    else:
        assert text == ascii(value)


def test_violations_past_the_cap_are_counted_not_listed() -> None:
    validator = Validator()
    for index in range(300):
        validator.add(f"lines[{index}].quantity", "must be between 1 and 1000, got 0")
    with pytest.raises(InvalidArgument) as caught:
        validator.raise_if_invalid()
    error = caught.value
    assert [v.field for v in error.violations] == [
        f"lines[{index}].quantity" for index in range(MAX_FIELD_VIOLATIONS)
    ]
    assert error.omitted == 300 - MAX_FIELD_VIOLATIONS
    assert error.message.startswith("lines[0].quantity: must be between 1 and 1000, got 0; ")
    assert error.message.endswith(" more")
    bad_request = error_details_pb2.BadRequest()
    assert error.to_status().details[0].Unpack(bad_request)
    assert len(bad_request.field_violations) == MAX_FIELD_VIOLATIONS + 1
    last = bad_request.field_violations[-1]
    assert (last.field, last.description) == ("request", "and 290 more not listed")


def test_the_message_lists_what_fits_and_counts_the_rest() -> None:
    error = InvalidArgument([FieldViolation(f"f{index}", "x" * 100) for index in range(5)])
    assert error.message == f"f0: {'x' * 100}; f1: {'x' * 100}; and 3 more"
    assert len(error.message.encode()) <= MAX_STATUS_MESSAGE_BYTES


def _status_bytes(status: status_pb2.Status) -> int:
    return trailer_bytes(status.message, status.SerializeToString())


_HOSTILE_TEXT = ["%" * 20_000, "\U0001f600" * 20_000, "\x00" * 20_000, "é%\n" * 7_000]


@pytest.mark.parametrize("text", _HOSTILE_TEXT)
def test_an_invalid_argument_stays_under_the_trailer_budget_whatever_it_holds(text: str) -> None:
    error = InvalidArgument(FieldViolation(text, text) for _ in range(10_000))
    assert _status_bytes(error.to_status()) <= ERROR_TRAILER_BUDGET_BYTES


@pytest.mark.parametrize("text", _HOSTILE_TEXT)
def test_any_mesh_error_message_is_clipped(text: str) -> None:
    error = NotFound(f"order {text} not found")
    assert len(error.message.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert _status_bytes(error.to_status()) <= ERROR_TRAILER_BUDGET_BYTES


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=300), st.text(max_size=300)), min_size=1, max_size=40))
def test_the_trailer_budget_holds_for_any_violations(pairs: list[tuple[str, str]]) -> None:
    error = InvalidArgument(FieldViolation(field, description) for field, description in pairs)
    assert _status_bytes(error.to_status()) <= ERROR_TRAILER_BUDGET_BYTES


def test_clipped_text_is_always_valid_utf8() -> None:
    # A clip that lands inside a multi-byte character drops the partial character.
    error = MeshError("é" * MAX_STATUS_MESSAGE_BYTES)
    assert error.message.endswith("...")
    error.message.encode("utf-8", "strict")


def test_three_hundred_bad_lines_answer_invalid_argument_with_small_trailers(
    call: grpc.UnaryUnaryMultiCallable,
) -> None:
    error = _error(call, "lines:300")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = _bad_request(error)
    assert len(violations) == MAX_FIELD_VIOLATIONS + 1
    assert violations[-1] == ("request", "and 290 more not listed")
    assert _wire_bytes(error) <= ERROR_TRAILER_BUDGET_BYTES


def test_a_huge_message_is_clipped_on_the_wire(call: grpc.UnaryUnaryMultiCallable) -> None:
    error = _error(call, "huge")
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details().startswith("order éé")
    assert _wire_bytes(error) <= ERROR_TRAILER_BUDGET_BYTES


# --- requests that do not parse -----------------------------------------------------------

# Field 1 (service, a string) holding bytes that are not UTF-8; then a truncated field.
_UNDECODABLE = [b"\x0a\x02\xff\xfe", b"\x0a\x05ab", b"\xff\xff\xff\xff", b"\x08"]


@pytest.mark.parametrize("payload", _UNDECODABLE)
def test_undecodable_request_is_invalid_argument_without_a_traceback(
    channel: grpc.Channel, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    typed = channel.unary_unary(f"/{_SERVICE}/Typed")
    error = _error(typed, payload)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _bad_request(error) == [("request", "is not a valid grpc.health.v1.HealthCheckRequest")]
    assert not _tracebacks(caplog)


def test_a_decodable_request_still_reaches_its_handler(channel: grpc.Channel) -> None:
    typed = channel.unary_unary(f"/{_SERVICE}/Typed")
    assert typed(health_pb2.HealthCheckRequest(service="é").SerializeToString(), timeout=5) == (
        "é".encode()
    )


def test_undecodable_streamed_requests_are_invalid_argument(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    with pytest.raises(grpc.RpcError) as caught:
        list(watch(_UNDECODABLE[0], timeout=5))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    reflection = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(reflection(iter([b"\xff\xff\xff"]), timeout=5))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request(caught.value) == [
        ("request", "is not a valid grpc.reflection.v1alpha.ServerReflectionRequest")
    ]
    assert not _tracebacks(caplog)


def test_a_message_over_the_limit_is_resource_exhausted_before_any_handler(
    call: grpc.UnaryUnaryMultiCallable,
) -> None:
    error = _error(call, b"x" * (MAX_RECEIVE_MESSAGE_BYTES + 1))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call(b"x" * MAX_RECEIVE_MESSAGE_BYTES, timeout=5) == b"ok"


def test_an_unexpected_exception_is_still_logged_with_its_traceback(
    call: grpc.UnaryUnaryMultiCallable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="meshkit.errors")
    _error(call, "bug")
    assert [record.getMessage() for record in _tracebacks(caplog)] == [
        f"unhandled error in /{_SERVICE}/Raise"
    ]
