"""`make logs` renders the mesh's JSON lines, as meshkit.logs and Envoy write them, one short
line each, and leaves every other line as it is."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from meshctl.logview import human, human_lines
from meshkit import logs

TRACE = "117a5d9ef4ba164b8d6af5de804500ec"
ORDER = "ord_0123456789abcdef0123456789abcdef"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """Lines the real formatter writes (meshkit.logs.configure on a stream)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("payment", version="v2", env={}, stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_service_line_is_time_service_level_message_and_its_ids() -> None:
    line = json.dumps(
        {
            "timestamp": "2026-05-01T12:00:00.123Z",
            "level": "INFO",
            "logger": "order_service.saga",
            "message": f"{ORDER}: FAILED: payment declined",
            "service": "order",
            "trace_id": TRACE,
            "span_id": "a3ce929d0e0e4736",
            "request_id": "demo-1",
            "order_id": ORDER,
        }
    )
    assert human(line) == (
        f"12:00:00.123 order INFO {ORDER}: FAILED: payment declined"
        f" trace_id={TRACE} order_id={ORDER} request_id=demo-1"
    )


def test_what_the_formatter_writes_reads_back_with_the_deployment(written: io.StringIO) -> None:
    with logs.context(order_id=ORDER):
        logging.getLogger("payment_service").warning("slow charge")
    shown = human(written.getvalue().strip())
    assert shown.endswith(f" payment/v2 WARNING slow charge order_id={ORDER}")


def test_a_server_faults_stack_follows_its_line_indented(written: io.StringIO) -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logging.getLogger("order_service.recovery").exception("recovery failed")
    first, *stack = human(written.getvalue().strip()).splitlines()
    assert first.endswith("ERROR recovery failed exception=ZeroDivisionError: division by zero")
    assert stack[0] == "    Traceback (most recent call last):"
    assert stack[-1] == "    ZeroDivisionError: division by zero"


def test_an_access_log_line_is_listener_call_cluster_status_duration_and_trace() -> None:
    line = json.dumps(
        {
            "duration_ms": 8,
            "grpc_status": 0,
            "listener": "edge",
            "method": "POST",
            "path": "/mesh.order.v1.OrderService/CreateOrder",
            "response_code": 200,
            "response_flags": "-",
            "service": "envoy",
            "timestamp": "2026-05-01T12:00:00.125Z",
            "trace_id": TRACE,
            "upstream_cluster": "order",
            "upstream_host": "127.0.0.1:50051",
        }
    )
    assert human(line) == (
        "12:00:00.125 envoy edge POST /mesh.order.v1.OrderService/CreateOrder"
        f" cluster=order grpc_status=0 8ms trace_id={TRACE}"
    )


def test_a_local_reply_shows_its_flags_and_no_cluster_or_trace() -> None:
    line = json.dumps(
        {
            "duration_ms": 0,
            "grpc_status": 14,
            "listener": "internal",
            "method": "POST",
            "path": "/mesh.payment.v1.PaymentService/Charge",
            "response_flags": "UH",
            "service": "envoy",
            "timestamp": "2026-05-01T12:00:01.000Z",
            "trace_id": None,
            "upstream_cluster": None,
        }
    )
    assert human(line) == (
        "12:00:01.000 envoy internal POST /mesh.payment.v1.PaymentService/Charge"
        " grpc_status=14 flags=UH 0ms"
    )


@pytest.mark.parametrize(
    "line",
    [
        "2026-12-01 23:23:13,700 INFO stopped: payment_v2 (exit status 0)",
        "[2026-12-01 23:23:13.513][20710][warning][main] caught ENVOY_SIGTERM",
        '{"not": "a log line"}',
        "[1, 2]",
        "{broken json",
        "",
    ],
)
def test_a_line_that_is_not_one_of_the_meshs_json_lines_is_left_as_it_is(line: str) -> None:
    assert human(line) == line


def test_a_tail_keeps_its_headers_and_renders_each_line() -> None:
    tail = "\n".join(
        [
            "==> var/log/order.log <==",
            json.dumps(
                {
                    "timestamp": "2026-05-01T12:00:00.000Z",
                    "level": "INFO",
                    "message": "serving",
                    "service": "order",
                }
            ),
        ]
    )
    assert human_lines(tail) == "==> var/log/order.log <==\n12:00:00.000 order INFO serving"
