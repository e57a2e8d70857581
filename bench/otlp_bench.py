"""What writing a batch of spans for OTLP export costs: the SDK's encoder (opentelemetry-exporter-
otlp-proto-common's ``encode_spans``) against meshkit._otlp_wire, each to the serialised request
the exporter sends, in alternating rounds in one process.

The spans are the order service's for one CreateOrder, as a traced stack records them (its
server span, the three saga steps, each step's logical call and attempt, three SQLite
transactions and a Redis command), each order with its own ids, in batches of 512 (the
BatchSpanProcessor's default export size).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit import _otlp_wire
from meshkit._trace_export import HashedResource

BATCH = 512
STEPS = (
    ("reserve", "mesh.inventory.v1.InventoryService", "Reserve", "inventory"),
    ("charge", "mesh.payment.v1.PaymentService", "Charge", "payment"),
    ("commit", "mesh.inventory.v1.InventoryService", "Commit", "inventory"),
)


def _one_order(tracer: trace.Tracer) -> None:
    order_id = f"ord_{uuid.uuid4().hex}"
    server = {"rpc.system": "grpc", "rpc.service": "mesh.order.v1.OrderService"}
    with tracer.start_as_current_span(
        "/mesh.order.v1.OrderService/CreateOrder",
        kind=trace.SpanKind.SERVER,
        attributes={**server, "rpc.method": "CreateOrder", "rpc.grpc.status_code": 0},
    ):
        redis = {"db.system": "redis", "db.statement": "EVALSHA ? ? ? ? ? ? ? ? ? ?"}
        with tracer.start_as_current_span("EVALSHA", kind=trace.SpanKind.CLIENT, attributes=redis):
            pass
        for step, service, method, target in STEPS:
            rpc = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            name = f"/{service}/{method}"
            with (
                tracer.start_as_current_span(
                    f"saga.{step}", attributes={"order.id": order_id, "saga.outcome": "OK"}
                ),
                tracer.start_as_current_span(
                    name,
                    attributes={**rpc, "resilience.target": target, "resilience.attempts": 1},
                ),
                tracer.start_as_current_span(
                    f"{name} attempt 1",
                    kind=trace.SpanKind.CLIENT,
                    attributes={**rpc, "resilience.attempt": 1, "rpc.grpc.status_code": 0},
                ),
            ):
                pass
            sqlite = {"db.system.name": "sqlite", "db.namespace": "order.db"}
            with tracer.start_as_current_span("sqlite write order.db", attributes=sqlite):
                pass


def order_spans(count: int) -> list[ReadableSpan]:
    """``count`` spans of CreateOrders, as the order service's tracer provider records them."""
    exporter = InMemorySpanExporter()
    resource = HashedResource(Resource.create({"service.name": "order"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meshkit")
    while len(exporter.get_finished_spans()) < count:
        _one_order(tracer)
    provider.shutdown()
    return list(exporter.get_finished_spans())[:count]


def _us_per_span(
    encode: Callable[[Sequence[ReadableSpan]], bytes], batches: list[list[ReadableSpan]]
) -> float:
    started = time.perf_counter()
    for batch in batches:
        encode(batch)
    return (time.perf_counter() - started) / sum(map(len, batches)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench otlp", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per encoder")
    parser.add_argument("--batches", type=int, default=8, help=f"batches of {BATCH} spans a round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 batches")
    args = parser.parse_args()
    rounds, batches = (3, 2) if args.quick else (args.rounds, args.batches)

    spans = order_spans(BATCH * batches)
    split = [spans[n : n + BATCH] for n in range(0, len(spans), BATCH)]
    if _otlp_wire.export_request(split[0]) != encode_spans(split[0]):
        raise SystemExit("the two encoders disagree: nothing to compare")
    encoders: dict[str, Callable[[Sequence[ReadableSpan]], bytes]] = {
        "SDK encode_spans": lambda batch: encode_spans(batch).SerializeToString(),
        "meshkit._otlp_wire": lambda batch: _otlp_wire.export_request(batch).SerializeToString(),
    }
    timings: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(rounds):
        for name, encode in encoders.items():
            timings[name].append(_us_per_span(encode, split))

    baseline = statistics.median(timings["SDK encode_spans"])
    print(
        f"\nOTLP request for {len(spans)} order-service spans in batches of {BATCH}, to the "
        f"bytes the exporter sends; {rounds} alternating rounds, median"
    )
    print("\n| encoder            | µs per span | vs SDK |")
    print("|--------------------|-------------|--------|")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name:<18} | {median:11.2f} | x{median / baseline:.3f} |")


if __name__ == "__main__":
    main()
