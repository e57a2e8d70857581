"""meshkit.method_metrics on a real server on port 0: one method's handling time, with the
trace id of a sampled call as the bucket's exemplar, written in the OpenMetrics format."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from meshkit.method_metrics import MethodDurationInterceptor
from meshkit.server import RunningServer, ServerOptions, build_server
from meshkit.trace_testing import traced

SERVICE = "test.v1.Timed"
TIMED = f"/{SERVICE}/Timed"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _register(server: grpc.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(lambda request, context: request)
        for name in ("Timed", "Other")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
def histogram() -> Histogram:
    return Histogram("timed_seconds", "test", buckets=(10.0,), registry=CollectorRegistry())


@pytest.fixture
def timed(histogram: Histogram) -> Iterator[RunningServer]:
    with traced():
        running = build_server(
            ServerOptions(port=0),
            service_names=[SERVICE],
            registrations=[_register],
            checks={},
            interceptors=[MethodDurationInterceptor(TIMED, histogram)],
        )
        try:
            yield running
        finally:
            running.stop()


def _call(running: RunningServer, method: str, metadata: Sequence[tuple[str, str]] = ()) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        channel.unary_unary(method)(b"ping", timeout=5, metadata=metadata)


def _buckets(histogram: Histogram) -> dict[str, tuple[float, dict[str, str] | None]]:
    """Each bucket's count and its exemplar's labels, as prometheus_client exports them."""
    return {
        sample.labels["le"]: (sample.value, sample.exemplar and sample.exemplar.labels)
        for metric in histogram.collect()
        for sample in metric.samples
        if sample.name.endswith("_bucket")
    }


def test_a_sampled_call_is_observed_with_its_trace_id_as_exemplar(
    timed: RunningServer, histogram: Histogram
) -> None:
    _call(timed, TIMED, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")])

    assert _buckets(histogram) == {"10.0": (1, {"trace_id": TRACE_ID}), "+Inf": (1, None)}
    registry = CollectorRegistry()
    registry.register(histogram)  # the collector as Prometheus reads it, in OpenMetrics
    assert f'# {{trace_id="{TRACE_ID}"}}' in generate_latest(registry).decode()


def test_an_unsampled_call_is_observed_without_an_exemplar(
    timed: RunningServer, histogram: Histogram
) -> None:
    _call(timed, TIMED, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")])

    assert _buckets(histogram) == {"10.0": (1, None), "+Inf": (1, None)}


def test_other_methods_are_not_observed(timed: RunningServer, histogram: Histogram) -> None:
    _call(timed, f"/{SERVICE}/Other")

    assert _buckets(histogram) == {"10.0": (0, None), "+Inf": (0, None)}
