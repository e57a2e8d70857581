"""Helpers for tests of traces: spans kept in memory, and a real OTLP/gRPC receiver.

:func:`traced` turns meshkit.tracing on for a block and keeps every span in memory (in-process
tests); :func:`otlp_receiver` is a collector on a free port, what services started as their
own processes export to (``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.tracing import Tracing

#: OTLP's Span.SpanKind numbers, by the names the SDK's SpanKind has.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
#: OTLP's Status.StatusCode numbers.
STATUSES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@contextlib.contextmanager
def traced(service: str = "test") -> Iterator[InMemorySpanExporter]:
    """meshkit.tracing on for the block; every span is in the exporter once it has ended."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider).activate()
    try:
        yield exporter
    finally:
        tracing.shutdown()


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as a collector received it, ids in hex ("" for a root's parent)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    status: str
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    events: tuple[str, ...] = field(default=())


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.endpoint = ""

    def Export(  # noqa: N802  # the OTLP service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                received += [
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        status=STATUSES.get(span.status.code, str(span.status.code)),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        events=tuple(event.name for event in span.events),
                    )
                    for span in scope_spans.spans
                ]
        with self._lock:
            self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.trace_id == trace_id]

    def wait_for(
        self,
        predicate: Callable[[list[ReceivedSpan]], bool],
        *,
        trace_id: str | None = None,
        timeout_s: float = 20.0,
    ) -> list[ReceivedSpan]:
        """The spans (of ``trace_id``, or all) once ``predicate`` holds for them; raises
        TimeoutError with what did arrive (exporters send in batches, on their own schedule)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans() if trace_id is None else self.trace(trace_id)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                shown = "\n".join(f"  {s.service} {s.kind} {s.name}" for s in spans)
                raise TimeoutError(f"after {timeout_s}s the receiver holds:\n{shown}")
            time.sleep(0.1)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/gRPC trace receiver on a free loopback port (``receiver.endpoint``)."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # The generated registration function is untyped.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(0).wait()
