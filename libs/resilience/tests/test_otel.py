"""resilience.otel: a span per logical call and a CLIENT span per attempt, against a real
FaultService on port 0 whose server is instrumented with OTel's grpc instrumentation and whose
client channel carries the attempt's context (resilience.otel.propagating), and the refusals
(bulkhead, deadline, budget) through a fake transport with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from concurrent import futures
from types import ModuleType
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import server_interceptor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import resilience
from resilience import (
    BulkheadOptions,
    ClientPolicy,
    Idempotency,
    LocalFailure,
    MethodPolicy,
    RetryOptions,
    ThrottleOptions,
    build_policy,
    deadline_scope,
)
from resilience._call import Status
from resilience.otel import (
    ATTEMPT,
    ATTEMPTS,
    BACKOFF,
    EVENT_BREAKER_REJECTED,
    EVENT_BREAKER_STATE_CHANGED,
    EVENT_BULKHEAD_REJECTED,
    EVENT_DEADLINE_EXHAUSTED,
    EVENT_RETRY_BUDGET_EXHAUSTED,
    EVENT_RETRY_SCHEDULED,
    OUTCOME,
    TracedPipeline,
    propagating,
)
from resilience.testing import FakeClock, ScriptedRng

GET = "/resiliencetest.v1.FaultService/Get"
POLICY = {
    "methodConfig": [
        {
            "name": [{}],
            "timeout": "10s",
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.001s",
                "maxBackoff": "0.005s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "circuitBreaker": None,
    "retryThrottling": None,
    "bulkhead": None,
}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def traced_server(proto_dir: Any, provider: TracerProvider) -> Iterator[Any]:
    """FaultService on 127.0.0.1:0 with OTel's server interceptor: a SERVER span per attempt."""
    from fault_service import FaultServicer, add_to_server

    servicer = FaultServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[server_interceptor(tracer_provider=provider)],
    )
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    servicer.release_all()
    server.stop(None)


@pytest.fixture(params=["channel", "interceptors"])
def connect(
    request: pytest.FixtureRequest, traced_server: Any, pb: ModuleType, pb_grpc: ModuleType,
    provider: TracerProvider,
) -> Iterator[Any]:  # fmt: skip
    """A stub on a propagating channel under a TracedPipeline, both ways in."""
    channels: list[grpc.Channel] = []

    def _connect(**overrides: Any) -> Any:
        service = pb.DESCRIPTOR.services_by_name["FaultService"]
        policy = build_policy({**POLICY, **overrides}, env={}, descriptors=[service])
        raw = grpc.insecure_channel(traced_server.address)
        channels.append(raw)
        instrumented = propagating(raw)
        pipeline = TracedPipeline(
            target=traced_server.address, policy=policy, tracer_provider=provider
        )
        if request.param == "channel":
            wrapped = resilience.intercept_channel(instrumented, pipeline)
        else:
            wrapped = grpc.intercept_channel(instrumented, *resilience.sync_interceptors(pipeline))
        return pb_grpc.FaultServiceStub(wrapped)

    yield _connect
    for channel in channels:
        channel.close()


def _children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _by_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def _logical(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """The library's call spans."""
    return [s for s in _by_kind(spans, SpanKind.INTERNAL) if s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "resilience"]  # fmt: skip


def test_two_failures_then_success_are_three_attempt_spans_each_the_servers_parent(
    pb: ModuleType, connect: Any, exporter: InMemorySpanExporter
) -> None:
    stub = connect()
    reply = stub.Get(pb.FaultRequest(key="twice", fail_first=2), timeout=5)
    assert reply.attempt == 3
    spans = exporter.get_finished_spans()

    (call,) = _logical(spans)
    assert call.name == GET
    assert call.parent is None
    assert call.attributes is not None
    assert call.attributes["rpc.system"] == "grpc"
    assert call.attributes["rpc.service"] == "resiliencetest.v1.FaultService"
    assert call.attributes["rpc.method"] == "Get"
    assert call.attributes["rpc.grpc.status_code"] == 0
    assert (call.attributes[ATTEMPTS], call.attributes[OUTCOME]) == (3, "success")
    assert call.status.status_code is StatusCode.UNSET
    assert [e.name for e in call.events] == [EVENT_RETRY_SCHEDULED] * 2

    attempts = sorted(_children(spans, call), key=lambda s: s.start_time or 0)
    assert [s.name for s in attempts] == [f"{GET} attempt {n}" for n in (1, 2, 3)]
    assert {s.kind for s in attempts} == {SpanKind.CLIENT}
    for attempt in attempts:
        assert attempt.attributes is not None
        assert attempt.attributes["rpc.system"] == "grpc"
        assert attempt.attributes["rpc.service"] == "resiliencetest.v1.FaultService"
        assert attempt.attributes["rpc.method"] == "Get"
    assert [dict(s.attributes or {}).get(ATTEMPT) for s in attempts] == [1, 2, 3]
    assert [dict(s.attributes or {}).get("rpc.grpc.status_code") for s in attempts] == [14, 14, 0]
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    # The wait before each retry, as the retry_scheduled event announced it.
    delays = [e.attributes["resilience.delay_s"] for e in call.events if e.attributes]
    assert BACKOFF not in (attempts[0].attributes or {})
    assert [(s.attributes or {})[BACKOFF] for s in attempts[1:]] == delays

    # Each attempt's request carried its span's context: the server's span is its child.
    for attempt in attempts:
        (server,) = _children(spans, attempt)
        assert server.kind is SpanKind.SERVER
    assert len(_by_kind(spans, SpanKind.SERVER)) == 3
    assert len(spans) == 1 + 3 + 3


def test_a_call_under_an_unsampled_span_records_nothing_and_passes_the_decision_on(
    pb: ModuleType, connect: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    stub = connect()
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True)
    )
    with trace.use_span(unsampled):
        reply = stub.Get(pb.FaultRequest(key="unsampled", fail_first=1), timeout=5)
    assert reply.attempt == 2
    # The server's parent-based sampler saw the unsampled traceparent: without it, it would
    # have started sampled traces of its own.
    assert exporter.get_finished_spans() == ()


def test_a_call_the_open_breaker_rejects_has_the_event_and_reaches_no_server(
    pb: ModuleType, connect: Any, exporter: InMemorySpanExporter
) -> None:
    stub = connect(circuitBreaker={"consecutiveFailures": 1, "resetTimeout": "60s"})
    with pytest.raises(grpc.RpcError):
        stub.Get(pb.FaultRequest(key="down", fail_first=-1), timeout=5)
    tripped = exporter.get_finished_spans()
    (first,) = _logical(tripped)
    assert EVENT_BREAKER_STATE_CHANGED in [e.name for e in first.events]
    exporter.clear()

    with pytest.raises(grpc.RpcError) as refused:
        stub.Get(pb.FaultRequest(key="down", fail_first=-1), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    spans = exporter.get_finished_spans()
    (call,) = spans  # no attempt span, no SERVER span
    assert [e.name for e in call.events] == [EVENT_BREAKER_REJECTED]
    assert call.events[0].attributes is not None
    assert call.events[0].attributes["resilience.breaker.state"] == "open"
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert (call.attributes[ATTEMPTS], call.attributes[OUTCOME]) == (0, "breaker_open")


# -- refusals, through a fake transport ----------------------------------------------------


class FakeTransport:
    """Every attempt fails UNAVAILABLE after 10 ms of fake time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent = 0

    def send(self, ctx: Any, timeout: float, attempt: int) -> tuple[Any, Status | None]:
        self.sent += 1
        self.clock.advance(0.01)
        return "failed", ("UNAVAILABLE", None, False)

    def local_error(self, ctx: Any, failure: LocalFailure) -> Any:
        return failure.code


class AsyncTransport(FakeTransport):
    async def send(  # type: ignore[override]  # the async adapter's send
        self, ctx: Any, timeout: float, attempt: int
    ) -> tuple[Any, Status | None]:
        return FakeTransport.send(self, ctx, timeout, attempt)


def _pipeline(provider: TracerProvider, clock: FakeClock, **policy: Any) -> TracedPipeline:
    retry = RetryOptions(max_attempts=3, initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2)
    options: dict[str, Any] = {
        "default": MethodPolicy(timeout=10, retry=retry),
        "idempotency": {GET: Idempotency.NO_SIDE_EFFECTS},
        "breaker": None,
        "throttle": None,
        "bulkhead": None,
        **policy,
    }
    return TracedPipeline(
        target="t:1", policy=ClientPolicy(**options), clock=clock, rng=ScriptedRng([0.5]),
        tracer_provider=provider,
    )  # fmt: skip


def test_an_exhausted_retry_budget_is_an_event(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    clock = FakeClock()
    pipeline = _pipeline(provider, clock, throttle=ThrottleOptions(max_tokens=2, token_ratio=0.1))
    assert pipeline.run(pipeline.plan(GET), None, FakeTransport(clock), None) == "failed"
    call, *attempts = sorted(exporter.get_finished_spans(), key=lambda s: len(s.name))
    assert [e.name for e in call.events] == [EVENT_RETRY_BUDGET_EXHAUSTED]
    assert len(attempts) == 1


def test_no_time_left_is_an_event_and_no_attempt(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    clock = FakeClock()
    pipeline = _pipeline(provider, clock)
    with deadline_scope(0.01, clock):
        assert pipeline.run(pipeline.plan(GET), None, FakeTransport(clock), None) == (
            "DEADLINE_EXCEEDED"
        )
    (call,) = exporter.get_finished_spans()
    assert [e.name for e in call.events] == [EVENT_DEADLINE_EXHAUSTED]
    assert call.status.status_code is StatusCode.ERROR


def test_a_full_bulkhead_is_an_event(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    clock = FakeClock()
    pipeline = _pipeline(provider, clock, bulkhead=BulkheadOptions(max_concurrent_calls=1))
    inner: list[Any] = []

    class Reentrant(FakeTransport):
        def send(self, ctx: Any, timeout: float, attempt: int) -> tuple[Any, Status | None]:
            inner.append(pipeline.run(pipeline.plan(GET), None, FakeTransport(clock), None))
            return "ok", None

    assert pipeline.run(pipeline.plan(GET), None, Reentrant(clock), None) == "ok"
    assert inner == ["RESOURCE_EXHAUSTED"]
    spans = exporter.get_finished_spans()
    refused, attempt, outer = spans  # in the order they ended
    assert [e.name for e in refused.events] == [EVENT_BULKHEAD_REJECTED]
    # The refused call was made during the outer call's attempt: it is that attempt's child.
    assert refused.parent is not None
    assert refused.parent.span_id == attempt.context.span_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == outer.context.span_id


def test_grpc_aio_calls_are_traced_the_same_way(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    clock = FakeClock()
    pipeline = _pipeline(provider, clock)
    transport = AsyncTransport(clock)
    result = asyncio.run(pipeline.run_async(pipeline.plan(GET), None, transport, None))
    assert result == "failed"
    call = next(s for s in exporter.get_finished_spans() if s.name == GET)
    attempts = _children(exporter.get_finished_spans(), call)
    assert [(s.attributes or {})[ATTEMPT] for s in attempts] == [1, 2, 3]
    assert [e.name for e in call.events] == [EVENT_RETRY_SCHEDULED] * 2
    assert clock.sleeps == pytest.approx([0.05, 0.1])
