"""meshkit.logs: each record is one JSON line with the service, the current span and the
order's fields; a server fault's exception carries its stack, a client's mistake never does."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from meshkit import logs
from meshkit.errors import InvalidArgument, NotFound, Unavailable

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What the process logs once meshkit.logs is configured; stdlib logging as it was after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("payment", version="v2", env={}, stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_names_time_level_service_logger_and_message(written: io.StringIO) -> None:
    logging.getLogger("payment_service.charges").info("charged %s", "pay_1")
    (line,) = lines(written)
    assert line == {
        "timestamp": line["timestamp"],
        "level": "INFO",
        "logger": "payment_service.charges",
        "message": "charged pay_1",
        "service": "payment",
        "service.version": "v2",
    }
    # UTC, to the millisecond, as Envoy's access log writes its times.
    assert len(line["timestamp"]) == len("2026-05-01T12:00:00.123Z")
    assert line["timestamp"].endswith("Z")


def test_inside_a_span_a_line_carries_its_trace_and_span_ids(written: io.StringIO) -> None:
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1)))
    log = logging.getLogger("order_service.saga")
    with trace.use_span(span):
        log.info("in the trace")
    log.info("outside")
    inside, outside = lines(written)
    assert (inside["trace_id"], inside["span_id"]) == (format(TRACE_ID, "032x"), "00f067aa0ba902b7")
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_context_fields_hold_inside_the_block_and_nest(written: io.StringIO) -> None:
    log = logging.getLogger("order_service.orders")
    with logs.context(request_id="demo-1"):
        log.info("claimed")
        with logs.context(order_id="ord_1"):
            log.info("running")
        log.info("answered")
    log.info("next request")
    claimed, running, answered, after = lines(written)
    assert (claimed["request_id"], "order_id" in claimed) == ("demo-1", False)
    assert (running["request_id"], running["order_id"]) == ("demo-1", "ord_1")
    assert "order_id" not in answered
    assert "request_id" not in after


def test_extra_fields_are_fields_and_a_non_ascii_message_stays_readable(
    written: io.StringIO,
) -> None:
    logging.getLogger("inventory_service").warning("stock of %s", "Käse", extra={"sku": "SKU-1"})
    assert "Käse" in written.getvalue()
    (line,) = lines(written)
    assert (line["message"], line["sku"]) == ("stock of Käse", "SKU-1")


def test_a_server_fault_is_an_exception_field_with_its_stack(written: io.StringIO) -> None:
    log = logging.getLogger("order_service.recovery")
    for error in (ZeroDivisionError("division by zero"), Unavailable("redis unavailable")):
        try:
            raise error
        except Exception:
            log.exception("recovery failed")
    division, unavailable = lines(written)
    assert division["message"] == "recovery failed"
    assert division["exception"]["type"] == "ZeroDivisionError"
    assert division["exception"]["message"] == "division by zero"
    assert division["exception"]["stack"].startswith("Traceback (most recent call last):")
    assert unavailable["exception"]["type"] == "meshkit.errors.Unavailable"
    assert "stack" in unavailable["exception"]
    assert "exc_info" not in division


def test_a_clients_mistake_is_logged_without_a_traceback(written: io.StringIO) -> None:
    log = logging.getLogger("order_service.servicer")
    for error in (InvalidArgument.field("lines[0].quantity", "must be 1..1000"), NotFound("x")):
        try:
            raise error
        except Exception:
            log.exception("refused")
    invalid, missing = lines(written)
    assert invalid["exception"] == {
        "type": "meshkit.errors.InvalidArgument",
        "message": "lines[0].quantity: must be 1..1000",
    }
    assert missing["exception"]["type"] == "meshkit.errors.NotFound"
    assert "Traceback" not in written.getvalue()


def test_below_the_level_nothing_is_written_and_debug_is_a_setting() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("order", env={"MESH_LOG_LEVEL": "WARNING"}, stream=stream)
        logging.getLogger("order_service.saga").info("a step")
        assert stream.getvalue() == ""
        logs.configure("order", env={"MESH_LOG_LEVEL": "DEBUG"}, stream=stream)
        logging.getLogger("order_service.saga").debug("a step")
        assert lines(stream)[0]["level"] == "DEBUG"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_bad_level_stops_the_process_with_one_line_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from meshkit import logs; logs.configure('order')"],
        env={"MESH_LOG_LEVEL": "LOUD", "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "order: MESH_LOG_LEVEL='LOUD': must be one of DEBUG, INFO, WARNING, ERROR\n"
    )
