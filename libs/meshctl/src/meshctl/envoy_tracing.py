"""Envoy's own spans, added to its rendered config when the services export traces.

Both listeners get ``envoy.tracers.opentelemetry``: a SERVER span per request (child of the
caller's traceparent, whose sampled flag it honours) carrying ``upstream_cluster``, so a trace
shows which payment deployment (payment_v1 or payment_v2) served a Charge; the backend's span
is its child. No CLIENT span per upstream request (``spawn_upstream_span``): Envoy retries only
connect failures, so it would be one per request, a copy of the SERVER span with the upstream's
address (the access log has it) at the cost of Envoy's CPU and the collector's. Spans go over
OTLP/gRPC to the collector the services export to, through a cluster of its own.

The edge answers every request it traces with the trace id in ``x-trace-id`` (Envoy's
``%TRACE_ID%``, sampled or not), added to the response headers it sends anyway: a service
sending it would be a second HEADERS frame per call (``send_initial_metadata``), ~0.7 ms of
CPU per order across the mesh here.

The edge starts every trace a caller did not, and the services' parent-based samplers follow
its sampled flag: so Envoy samples a request without a traceparent as ``OTEL_TRACES_SAMPLER``
says (``random_sampling``), or ``parentbased_traceidratio`` at 0.1 would still trace every
order.
"""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from meshctl.config import StackError
from meshkit.tracing import TRACE_ID_HEADER

CLUSTER = "opentelemetry_collector"
SERVICE_NAME = "envoy"
DEFAULT_OTLP_PORT = 4317
#: Envoy batches spans for 5 s or 5 spans by default; a second shows a trace about as soon as
#: the services' own (whose batch processor waits up to 5 s, OTEL_BSP_SCHEDULE_DELAY) do. Five
#: spans is an export per order or two under load, each a gRPC request Envoy sends and the
#: collector answers; 512 is the services' batch (OTEL_BSP_MAX_EXPORT_BATCH_SIZE).
RUNTIME = {
    "tracing.opentelemetry.flush_interval_ms": 1000,
    "tracing.opentelemetry.min_flush_spans": 512,
}
#: OTEL_TRACES_SAMPLER values that sample no new trace, or a ratio of them (the SDK's names).
ALWAYS_OFF = frozenset({"always_off", "parentbased_always_off"})
RATIO = frozenset({"traceidratio", "parentbased_traceidratio"})
#: Span names, in access-log format: the request's path is /package.Service/Method.
OPERATION = "%REQ(:PATH)%"
#: The stat_prefix of the edge listener's connection manager (deploy/envoy/envoy.yaml).
EDGE = "edge"
_HCM = "envoy.filters.network.http_connection_manager"
_TYPE = "type.googleapis.com/"


def sampling_percent(env: Mapping[str, str]) -> float:
    """The percentage of new traces ``OTEL_TRACES_SAMPLER``/``_ARG`` sample, as the SDK reads
    them: an unknown sampler is the default (every trace), a bad ratio is 1.0."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler in ALWAYS_OFF:
        return 0.0
    if sampler not in RATIO:
        return 100.0
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    return 100.0 * ratio if 0.0 <= ratio <= 1.0 else 100.0


def traced(config: dict[str, Any], endpoint: str, *, sampling: float = 100.0) -> dict[str, Any]:
    """``config`` with a tracer on every HTTP connection manager and the collector's cluster;
    ``sampling`` is the percentage of requests without a traceparent that are traced."""
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise StackError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r}: Envoy exports to an http:// or "
            "https:// address (host:port of an OTLP/gRPC collector)"
        )
    out = copy.deepcopy(config)
    for manager in _connection_managers(out):
        manager["tracing"] = {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": CLUSTER}, "timeout": "1s"},
                    "service_name": SERVICE_NAME,
                },
            },
            # Spans named after the gRPC method, as the services name theirs, rather than
            # Envoy's "ingress" on every hop.
            "operation": OPERATION,
            "random_sampling": {"value": sampling},
        }
        if manager.get("stat_prefix") == EDGE:
            manager["route_config"]["response_headers_to_add"] = [
                {
                    "header": {"key": TRACE_ID_HEADER, "value": "%TRACE_ID%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ]
    out["static_resources"]["clusters"].append(_cluster(parsed))
    for layer in out.get("layered_runtime", {}).get("layers", []):
        if "static_layer" in layer:
            layer["static_layer"] = {**RUNTIME, **(layer["static_layer"] or {})}
    return out


def _cluster(endpoint: urllib.parse.SplitResult) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": endpoint.hostname,
                                        "port_value": endpoint.port or DEFAULT_OTLP_PORT,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
        # OTLP/gRPC is HTTP/2.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    if endpoint.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": endpoint.hostname,
            },
        }
    return cluster


def _connection_managers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("name") == _HCM and isinstance(node.get("typed_config"), dict):
            yield node["typed_config"]
        for value in node.values():
            yield from _connection_managers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _connection_managers(item)
