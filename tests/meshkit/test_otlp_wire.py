"""meshkit._otlp_wire writes the request the SDK's OTLP encoder builds, for every kind of span."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from meshkit import _otlp_wire
from meshkit._trace_export import WireEncodingExporter
from meshkit.trace_testing import otlp_receiver

REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value"), ("other", "x")]),
)


def _spans(provider: TracerProvider, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracer = provider.get_tracer("mesh.test", "1.2.3", schema_url="https://opentelemetry.io/s/1")
    plain = provider.get_tracer("plain")
    parent = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE_PARENT))
    with tracer.start_as_current_span(
        "/mesh.order.v1.OrderService/CreateOrder",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.grpc.status_code": 0, "unicode": "zürich ✓"},
    ) as server:
        server.set_attributes(
            {
                "bool.true": True,
                "bool.false": False,
                "int.negative": -5,
                "int.large": 2**62,
                "float": 0.25,
                "float.zero": 0.0,
                "empty": "",
                "strings": ("a", "", "c"),
                "ints": (1, -2, 3),
                "floats": (1.5, -0.5),
                "bools": (True, False),
            }
        )
        server.add_event("retry scheduled", {"resilience.attempt": 1, "backoff_s": 0.1})
        server.add_event("no attributes")
        for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(f"child {kind.name}", kind=kind) as child:
                child.set_status(Status(StatusCode.ERROR, "UNAVAILABLE: payment"))
        with plain.start_as_current_span(
            "linked", links=[Link(REMOTE_PARENT, {"link.kind": "follows"}), Link(REMOTE_PARENT)]
        ) as linked:
            linked.set_status(Status(StatusCode.OK))
    with plain.start_as_current_span("root, no parent", start_time=1, end_on_exit=False) as root:
        root.end(end_time=2)
    return list(exporter.get_finished_spans())


@pytest.fixture
def recorded() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "order", "service.version": "v1"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_every_kind_of_span_and_value_encodes_as_the_sdk_encodes_it(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    spans = _spans(*recorded)

    assert _otlp_wire.export_request(spans) == encode_spans(spans)


def test_spans_of_two_resources_are_grouped_as_the_sdk_groups_them(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    other_exporter = InMemorySpanExporter()
    other = TracerProvider(resource=Resource({"service.name": "payment"}, "https://s/2"))
    other.add_span_processor(SimpleSpanProcessor(other_exporter))
    first = _spans(*recorded)
    second = _spans(other, other_exporter)
    mixed = [span for pair in zip(first, second, strict=True) for span in pair]

    assert _otlp_wire.export_request(mixed) == encode_spans(mixed)
    other.shutdown()


def test_an_attribute_the_sdk_cannot_encode_is_left_out_and_the_rest_is_kept(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    # The SDK's attribute checks let an int through whatever its size; OTLP's is an int64.
    with provider.get_tracer("t").start_as_current_span("big", attributes={"n": 2**70, "ok": 1}):
        pass
    spans = list(exporter.get_finished_spans())

    request = _otlp_wire.export_request(spans)
    assert request == encode_spans(spans)
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert [a.key for a in span.attributes] == ["ok"]


def test_values_that_are_equal_but_encode_apart_are_never_mixed_up(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    tracer = provider.get_tracer("t")
    # Python calls these pairs equal; OTLP writes each differently.
    for value in ((1, 2), (True, 2), 0.0, -0.0, 1, True, 1.0):
        with tracer.start_as_current_span("same key", attributes={"v": value}):
            pass
    spans = list(exporter.get_finished_spans())

    assert _otlp_wire.export_request(spans) == encode_spans(spans)
    assert _otlp_wire.export_request(spans).SerializeToString() == (
        encode_spans(spans).SerializeToString()
    )


def test_no_spans_is_an_empty_request() -> None:
    assert _otlp_wire.encode([]) == b""


def test_the_exporter_sends_the_wire_encoded_request_to_a_collector(
    recorded: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = _spans(*recorded)
    encoded: list[int] = []
    encode = _otlp_wire.encode
    monkeypatch.setattr(
        _otlp_wire, "encode", lambda batch: encoded.append(len(batch)) or encode(batch)
    )
    with otlp_receiver() as receiver:
        exporter = WireEncodingExporter(endpoint=receiver.endpoint, timeout=5)
        try:
            exporter.export(spans)
        finally:
            exporter.shutdown()

        # The SDK's exporter still calls the hook this encoder takes (_translate_data).
        assert encoded == [len(spans)]
        assert sorted(s.name for s in receiver.spans()) == sorted(s.name for s in spans)
