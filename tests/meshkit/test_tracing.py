"""meshkit.tracing against real servers on port 0: SERVER spans, the status a span gets,
nothing recorded under an unsampled call, SQLite and Redis spans, the resource, and a
collector that is away."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

import resilience
from meshkit import tracing
from meshkit._trace_export import ReportingExporter
from meshkit.errors import InvalidArgument, Unavailable
from meshkit.server import RunningServer, ServerOptions, build_server
from meshkit.sqlite import Database
from meshkit.testing import free_port
from meshkit.trace_testing import traced

SERVICE = "test.v1.Probe"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _invalid(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise InvalidArgument.field("name", "must not be empty")


def _unavailable(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise Unavailable("down for maintenance")


def _register(server: grpc.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(behaviour)
        for name, behaviour in (("Echo", _echo), ("Invalid", _invalid), ("Down", _unavailable))
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
def serve() -> Iterator[Callable[[], RunningServer]]:
    """Starts a probe server on port 0 when called (after tracing is set up); stops it after."""
    started: list[RunningServer] = []

    def start() -> RunningServer:
        running = build_server(
            ServerOptions(port=0),
            service_names=[SERVICE],
            registrations=[_register],
            checks={},
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _call(
    running: RunningServer, method: str, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[grpc.StatusCode, dict[str, str]]:
    """The call's status code and its initial metadata."""
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        multicallable = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            _, call = multicallable.with_call(b"ping", timeout=5, metadata=metadata)
        except grpc.RpcError as error:
            call = error
        return call.code(), dict(call.initial_metadata())


def _server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is SpanKind.SERVER]


def test_tracing_is_off_without_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, serve: Callable[[], RunningServer]
) -> None:
    for var in tracing.ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    assert tracing.configure("order") is None
    assert tracing.server_interceptors() == []
    code, headers = _call(serve(), "Echo")
    assert code is grpc.StatusCode.OK
    assert tracing.TRACE_ID_HEADER not in headers
    with tracing.span("saga.reserve") as span:
        assert not span.get_span_context().is_valid


def test_sdk_disabled_wins_over_an_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"}
    assert tracing.endpoint(env) is None
    assert tracing.endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": " http://c:4317 "}) == "http://c:4317"


def test_a_call_is_a_server_span_child_of_the_callers(
    serve: Callable[[], RunningServer],
) -> None:
    with traced() as exporter:
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        code, headers = _call(serve(), "Echo", [("traceparent", traceparent)])
        (span,) = _server_spans(exporter.get_finished_spans())
    assert code is grpc.StatusCode.OK
    # The edge answers with the trace id (meshctl.envoy_tracing): a second HEADERS frame per
    # call from every service would cost more than the span.
    assert tracing.TRACE_ID_HEADER not in headers
    assert span.name == f"/{SERVICE}/Echo"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes is not None
    assert span.attributes["rpc.service"] == SERVICE
    assert span.attributes["rpc.method"] == "Echo"
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.status.status_code is StatusCode.UNSET


def test_a_call_without_a_caller_starts_its_own_trace(serve: Callable[[], RunningServer]) -> None:
    with traced() as exporter:
        code, _ = _call(serve(), "Echo")
        (span,) = _server_spans(exporter.get_finished_spans())
    assert code is grpc.StatusCode.OK
    assert span.parent is None


def test_an_unsampled_caller_is_honoured(serve: Callable[[], RunningServer]) -> None:
    with traced() as exporter:
        code, _ = _call(serve(), "Echo", [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")])
        assert _server_spans(exporter.get_finished_spans()) == []
    assert code is grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("flags", "recorded"), [("01", ["SET", "step", f"/{SERVICE}/Work"]), ("00", [])]
)
def test_nothing_under_an_unsampled_call_is_recorded(
    redis_url: str, flags: str, recorded: list[str]
) -> None:
    """A sampled call's step and Redis command are spans under its own; an unsampled call's
    are not even started (the Redis instrumentation is suppressed under it)."""
    client = redis.Redis.from_url(redis_url)
    instrumented: list[bool] = []

    def work(request: bytes, context: grpc.ServicerContext) -> bytes:
        instrumented.append(is_instrumentation_enabled())
        with tracing.span("step"):
            client.set("unsampled-test", "1")
        return request

    def register(server: grpc.Server) -> None:
        handlers = {"Work": grpc.unary_unary_rpc_method_handler(work)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    try:
        with traced() as exporter:
            running = build_server(
                ServerOptions(port=0), service_names=[SERVICE], registrations=[register], checks={}
            )
            try:
                code, _ = _call(
                    running, "Work", [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{flags}")]
                )
            finally:
                running.stop()
            spans = exporter.get_finished_spans()
    finally:
        client.close()
    assert code is grpc.StatusCode.OK
    assert [span.name for span in spans] == recorded
    assert all(format(span.context.trace_id, "032x") == TRACE_ID for span in spans)
    assert instrumented == [bool(recorded)]


@pytest.mark.parametrize(
    ("method", "code", "status"),
    [
        # The caller's mistake: the span records the code but is no server error.
        ("Invalid", grpc.StatusCode.INVALID_ARGUMENT, StatusCode.UNSET),
        ("Down", grpc.StatusCode.UNAVAILABLE, StatusCode.ERROR),
    ],
)
def test_a_mapped_error_gives_the_span_its_code_and_only_a_server_fault_is_an_error(
    serve: Callable[[], RunningServer], method: str, code: grpc.StatusCode, status: StatusCode
) -> None:
    with traced() as exporter:
        answered, _ = _call(serve(), method)
        (span,) = _server_spans(exporter.get_finished_spans())
    assert answered is code
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code is status


def test_health_checks_are_not_traced(serve: Callable[[], RunningServer]) -> None:
    with traced() as exporter:
        running = serve()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert exporter.get_finished_spans() == ()


def _insert_then_fail(db: Database) -> None:
    with db.write() as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        raise ValueError("no")


def test_each_sqlite_write_transaction_is_a_span(tmp_path: Path) -> None:
    db = Database(tmp_path / "orders.db", "CREATE TABLE IF NOT EXISTS t (v INTEGER);")
    try:
        with traced() as exporter:
            with db.write() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(ValueError, match="no"):
                _insert_then_fail(db)
            committed, rolled_back = exporter.get_finished_spans()
    finally:
        db.close()
    assert committed.name == "sqlite write orders.db"
    assert committed.attributes == {"db.system.name": "sqlite", "db.namespace": "orders.db"}
    assert committed.status.status_code is StatusCode.UNSET
    assert rolled_back.status.status_code is StatusCode.ERROR
    assert db.read().execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_redis_commands_are_spans_under_the_current_one(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        with traced() as exporter:
            with tracing.span("saga.reserve"):
                client.set("k", "v")
            command, parent = exporter.get_finished_spans()
    finally:
        client.close()
    assert command.name == "SET"
    assert command.kind is SpanKind.CLIENT
    assert command.parent is not None
    assert command.parent.span_id == parent.context.span_id
    # Uninstrumented again once tracing is off.
    assert tracing.active() is None


def test_a_background_loop_records_no_redis_or_sqlite_spans(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    db = Database(tmp_path / "outbox.db", "CREATE TABLE IF NOT EXISTS t (v INTEGER);")
    try:
        with traced() as exporter:
            with tracing.background():
                client.xadd("events", {"v": "1"})
                with db.write() as conn, tracing.span("publish"):
                    conn.execute("INSERT INTO t VALUES (1)")
            client.delete("events")  # outside the loop: traced again
            (after,) = exporter.get_finished_spans()
    finally:
        client.close()
        db.close()
    assert after.name == "DEL"


def test_a_message_consumed_in_a_background_loop_joins_the_trace_that_produced_it(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        with traced() as exporter:
            with tracing.span("saga.commit") as producer:
                traceparent = tracing.current_traceparent()
            with tracing.background():
                client.get("poll")  # the loop's own work: no span
                with tracing.consumer_span("process events", traceparent, {"order.id": "o1"}):
                    client.set("stored", "1")  # the message's work: traced again
            spans = {span.name: span for span in exporter.get_finished_spans()}
    finally:
        client.close()
    assert set(spans) == {"saga.commit", "process events", "SET"}
    consumer, command = spans["process events"], spans["SET"]
    ids = producer.get_span_context()
    assert traceparent.startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")
    assert int(traceparent[-2:], 16) & 1  # sampled
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.context.trace_id == producer.get_span_context().trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.get_span_context().span_id
    assert command.parent is not None
    assert command.parent.span_id == consumer.context.span_id


def test_a_message_of_an_unsampled_trace_or_of_none_is_consumed_untraced() -> None:
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    with traced() as exporter:
        with tracing.background():
            for traceparent in (unsampled, "", "not a traceparent"):
                with tracing.consumer_span("process events", traceparent):
                    assert not is_instrumentation_enabled()
        assert exporter.get_finished_spans() == ()
    assert tracing.current_traceparent() == ""  # tracing off


def test_health_probe_checks_run_untraced(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        with traced() as exporter:
            tracing.untraced(client.ping)()
            assert exporter.get_finished_spans() == ()
    finally:
        client.close()


def test_the_resource_names_the_service_and_the_environment_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    payment = tracing.configure("payment", version="v2")
    assert payment is not None
    payment.shutdown()
    assert payment.provider.resource.attributes["service.name"] == "payment"
    assert payment.provider.resource.attributes["service.version"] == "v2"
    assert payment.provider.resource.attributes["deployment.environment.name"] == "test"

    # Hashed once, and still the resource it was made from (the encoder groups spans by it).
    plain = Resource(dict(payment.provider.resource.attributes))
    assert payment.provider.resource == plain
    assert hash(payment.provider.resource) == hash(plain)

    monkeypatch.setenv("OTEL_SERVICE_NAME", "payment-canary")
    renamed = tracing.configure("payment")
    assert renamed is not None
    renamed.shutdown()
    assert renamed.provider.resource.attributes["service.name"] == "payment-canary"


QUEUE_SIZE = 64


def test_a_collector_that_is_away_costs_dropped_spans_and_one_line(
    monkeypatch: pytest.MonkeyPatch,
    serve: Callable[[], RunningServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens at the endpoint: calls still succeed, the queue never holds more than
    its bound, and the whole outage is at most one warning."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(QUEUE_SIZE))
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    caplog.set_level(logging.INFO)
    configured = tracing.configure("order")
    assert configured is not None
    active = configured.activate()
    # The SDK keeps its queue private; its length is the memory spans hold.
    (processor,) = active.provider._active_span_processor._span_processors
    queue = processor._batch_processor._queue
    try:
        running = serve()
        longest = 0
        for _ in range(20 * QUEUE_SIZE):
            code, _ = _call(running, "Echo")
            assert code is grpc.StatusCode.OK
            longest = max(longest, len(queue))
    finally:
        active.shutdown()
    assert 0 < longest <= QUEUE_SIZE
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) <= 1, [r.getMessage() for r in noisy]
    assert all(r.name == "meshkit.tracing" for r in noisy)


class _Scripted(SpanExporter):
    """Answers exports from a script of results; counts what it was asked."""

    def __init__(self, results: Sequence[SpanExportResult]) -> None:
        self._results = list(results)
        self.exports = 0
        self.shutdowns = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exports += 1
        return self._results.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1

    def force_flush(self, timeout_millis: int = 30_000) -> Any:
        return True


def test_an_outage_is_reported_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    fail, ok = SpanExportResult.FAILURE, SpanExportResult.SUCCESS
    inner = _Scripted([fail, fail, fail, ok, ok, fail])
    exporter = ReportingExporter(inner, "http://collector:4317")
    caplog.set_level(logging.INFO, logger="meshkit.tracing")
    assert [exporter.export([]) for _ in range(6)] == [fail, fail, fail, ok, ok, fail]
    assert [(r.levelname, r.getMessage().split(" ")[-1]) for r in caplog.records] == [
        ("WARNING", "answers"),
        ("INFO", "again"),
        ("WARNING", "answers"),
    ]
    # Stopping while the collector is away: no more tries, and the exporter is shut once.
    exporter.closing()
    assert exporter.export([]) is fail
    exporter.shutdown()
    assert (inner.exports, inner.shutdowns) == (6, 1)


def test_outbound_pipelines_are_traced_only_while_tracing_is_on() -> None:
    from resilience.otel import TracedPipeline

    policy = resilience.build_policy({}, env={})
    assert type(tracing.pipeline(target="payment", policy=policy)) is resilience.Pipeline
    with traced():
        assert isinstance(tracing.pipeline(target="payment", policy=policy), TracedPipeline)
