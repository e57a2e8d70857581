"""Builds and runs a service's gRPC server the same way for every service.

Server model: synchronous grpcio with a thread pool, because the stores (sqlite3, redis-py)
and the order saga's outbound calls block. On these 2-core machines the pool size decides
its speed against grpc.aio (~1.2x with 4 threads, ~0.6x with 32: README, Server model).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from py_grpc_prometheus.prometheus_server_interceptor import PromServerInterceptor

import resilience
from meshkit import tracing
from meshkit._handlers import InterceptedOncePerMethod
from meshkit.errors import ErrorMappingInterceptor
from meshkit.health import Check, DependencyHealth
from meshkit.limits import MAX_RECEIVE_MESSAGE_BYTES
from meshkit.process_wide import process_wide
from meshkit.tls import ENVOY, PeerIdentityInterceptor, WorkloadTls, spiffe_id

_log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0
DEFAULT_MAX_WORKERS = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    """How a service listens; validated at construction so bad settings stop start-up."""

    host: str = "127.0.0.1"
    port: int
    metrics_port: int | None = None
    max_workers: int = DEFAULT_MAX_WORKERS
    grace_s: float = DEFAULT_GRACE_S
    #: Serve only mTLS with this workload's certificate; None serves plaintext (MESH_MTLS=0).
    tls: WorkloadTls | None = None
    #: The identities answered over mTLS: Envoy, which applies the mesh's RBAC for everyone.
    allowed_peers: frozenset[str] = frozenset({spiffe_id(ENVOY)})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")

    @classmethod
    def of(cls, settings: ListenSettings) -> ServerOptions:
        """The options a service's settings give (every service's settings have these fields)."""
        return cls(
            host=settings.host,
            port=settings.port,
            metrics_port=settings.metrics_port,
            max_workers=settings.max_workers,
            tls=settings.tls,
        )


class ListenSettings(Protocol):
    """The fields of a service's settings that say how it listens."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def metrics_port(self) -> int | None: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def tls(self) -> WorkloadTls | None: ...


#: Adds one servicer to a server, e.g. ``lambda s: add_FooServicer_to_server(FooServicer(), s)``.
Registration = Callable[[grpc.Server], None]


@process_wide
def metrics_interceptor() -> PromServerInterceptor:
    """The process-wide RED metrics interceptor (go-grpc-prometheus names, one registry)."""
    return PromServerInterceptor(enable_handling_time_histogram=True)


@process_wide
def resilience_metrics() -> resilience.PrometheusListener:
    """The process-wide listener exporting the resilience pipeline's metrics (one registry)."""
    return resilience.PrometheusListener()


@dataclass(slots=True)
class RunningServer:
    """A started server: its bound port, health servicer and dependency probe."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    probe: DependencyHealth
    grace_s: float
    metrics_port: int | None = None
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    metrics_http: Any = None

    def stop(self) -> None:
        """Graceful stop: NOT_SERVING first so Envoy drains us, then finish in-flight calls."""
        self.probe.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_s).wait()
        if self.metrics_http is not None:
            # Frees the port, so a server restarted in the same process can bind it again.
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        for hook in self.on_stop:
            hook()


def build_server(
    options: ServerOptions,
    *,
    service_names: Sequence[str],
    registrations: Iterable[Registration],
    checks: Mapping[str, Check],
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    reflection_names: Sequence[str] | None = None,
) -> RunningServer:
    """Creates, binds and starts a server with health, reflection, RED metrics and, when
    meshkit.tracing is on, a SERVER span per call and its trace id in ``x-trace-id``.

    ``service_names`` are the full names of the services registered (from the
    generated ``DESCRIPTOR``); health reports each of them.
    """
    # A peer check runs right after metrics, so a refused caller is counted and does nothing.
    peer_check = [] if options.tls is None else [PeerIdentityInterceptor(options.allowed_peers)]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers),
        # The deadline interceptor makes the inbound deadline cap every outbound call a handler
        # makes (libs/resilience), so a caller's budget is honoured across the whole mesh.
        # Tracing goes outermost, so its span covers every other interceptor's work and a call
        # they refuse is still traced.
        interceptors=[
            InterceptedOncePerMethod(
                [
                    *tracing.server_interceptors(),
                    metrics_interceptor(),
                    *peer_check,
                    resilience.DeadlineServerInterceptor(),
                    ErrorMappingInterceptor(),
                    *interceptors,
                ]
            )
        ],
        # Above this grpcio answers RESOURCE_EXHAUSTED before any handler runs (meshkit.limits).
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ],
    )
    for register in registrations:
        register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(reflection_names if reflection_names is not None else service_names)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], server)
    address = f"{options.host}:{options.port}"
    port = (
        server.add_insecure_port(address)
        if options.tls is None
        else server.add_secure_port(address, options.tls.server_credentials())
    )
    if port == 0:
        raise OSError(f"could not bind {options.host}:{options.port}")
    probe = DependencyHealth(
        health_servicer,
        service_names,
        {name: tracing.untraced(check) for name, check in checks.items()},
    )
    probe.start()
    server.start()
    metrics_port = None
    metrics_http = None
    if options.metrics_port is not None:
        metrics_http, _ = start_http_server(options.metrics_port, addr=options.host)
        metrics_port = metrics_http.server_port
    _log.info(
        "serving %s on %s:%d (%s)",
        ", ".join(service_names) or "reflection",
        options.host,
        port,
        "plaintext" if options.tls is None else f"mTLS as {options.tls.identity}",
    )
    return RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        probe=probe,
        grace_s=options.grace_s,
        metrics_port=metrics_port,
        metrics_http=metrics_http,
    )


def run_until_signalled(running: RunningServer) -> None:
    """Blocks until SIGTERM/SIGINT, then stops gracefully (supervisor sends SIGTERM)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _log.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    running.stop()
