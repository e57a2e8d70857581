"""What the stack runs: the one list every other part of the launcher reads.

supervisord's config, Envoy's clusters, Prometheus's scrape jobs, the ports and their variables,
the certificates `up` issues, the order programs start and stop in, `make status` and the banner
all come from :data:`PROGRAMS`. A new backend is one entry here, plus its routes in
deploy/envoy/envoy.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.inventory.v1 import inventory_pb2
from mesh.notification.v1 import notification_pb2
from mesh.order.v1 import order_pb2
from mesh.payment.v1 import payment_pb2
from meshctl import probes
from meshctl.pidrecord import RECORD_FILE
from meshkit import settings, tls

ORDER_SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
INVENTORY_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name
PAYMENT_SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
NOTIFICATION_SERVICE = notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name


@dataclass(frozen=True, slots=True)
class Port:
    """A port the stack binds, set by the environment variable ``var``."""

    var: str
    default: int
    doc: str

    @property
    def setting(self) -> settings.Var[int]:
        # Envoy's config and every target are written before anything starts: no port 0.
        return settings.integer(self.var, self.default, lo=1, hi=65535, doc=self.doc)


@dataclass(frozen=True, slots=True)
class Var:
    """A value the launcher puts in supervisord's environment for a command to use (see
    meshctl.render: the config refers to it and never holds it)."""

    name: str


@dataclass(frozen=True, slots=True)
class Loopback:
    """``127.0.0.1:<port>`` as one word, for a program that listens on loopback only whatever
    MESH_HOST says (Prometheus and the exporter answer anyone who connects)."""

    port: Port


#: One word of a command: literal text, the number of one of the stack's ports, a Var, or a
#: loopback address.
Word = str | Port | Var | Loopback

PYTHON = Var("MESHCTL_PYTHON")
ENVOY_BINARY = Var("MESHCTL_ENVOY")
REDIS_SERVER = Var("MESHCTL_REDIS_SERVER")
REDIS_PORT = Var("MESHCTL_REDIS_PORT")
PROMETHEUS_BINARY = Var("MESHCTL_PROMETHEUS")
PROMETHEUS_DATA = Var("MESHCTL_PROMETHEUS_DATA")
REDIS_EXPORTER_BINARY = Var("MESHCTL_REDIS_EXPORTER")
#: REDIS_URL, as one command word.
REDIS_TARGET = Var("MESHCTL_REDIS_URL")


@dataclass(frozen=True, slots=True)
class Scrape:
    """Where Prometheus reads a program's metrics."""

    port: Port
    path: str = "/metrics"


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """A gRPC server behind Envoy, reached through a cluster named after its program."""

    port: Port
    #: What Envoy's health checks and the launcher's ask for ("" is the server as a whole).
    health_service: str
    metrics: Port | None = None
    #: How the banner names it.
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    """One process under supervisord."""

    #: supervisord's name for it, its log file's name and, for a backend, its Envoy cluster's.
    name: str
    command: tuple[Word, ...]
    #: supervisord's priority: lower starts first; `down` stops in the reverse order.
    priority: int
    #: How `status` and `up` tell that it serves: "SERVING", or why not.
    probe: probes.Probe
    #: Its mTLS identity (spiffe://mesh.local/<workload>); None: it holds no certificate.
    workload: str | None = None
    backend: Backend | None = None
    #: Ports it binds besides its backend's (Envoy's listeners and admin).
    listens: tuple[Port, ...] = ()
    #: Its own environment, on top of what every program sees.
    env: Mapping[str, Word] = field(default_factory=dict)
    #: Runs in the run dir, so its command names the files there relative to it.
    in_run_dir: bool = False
    #: A supervisord event listener: it reads supervisord's events on stdin.
    listener: bool = False
    #: Started only when nothing answers at REDIS_URL.
    only_without_redis: bool = False
    #: Its metrics, for Prometheus; None: it has none.
    scrape: Scrape | None = None

    @property
    def ports(self) -> tuple[Port, ...]:
        own = () if self.backend is None else (self.backend.port, self.backend.metrics)
        return tuple(port for port in (*own, *self.listens) if port is not None)


def _backend(
    name: str,
    module: str,
    *,
    port: Port,
    metrics: Port | None,
    health_service: str,
    workload: str,
    priority: int,
    label: str,
    env: Mapping[str, Word] | None = None,
) -> Program:
    """A Python gRPC service, ``python -m <module>``; its traces are named after its workload
    (payment v1 and v2 are one service, told apart by service.version)."""
    return Program(
        name=name,
        command=(PYTHON, "-m", module),
        priority=priority,
        probe=probes.GrpcHealth(port, health_service),
        workload=workload,
        backend=Backend(port=port, health_service=health_service, metrics=metrics, label=label),
        env={"OTEL_SERVICE_NAME": workload, **(env or {})},
        scrape=None if metrics is None else Scrape(metrics),
    )


def _payment(version: str, port: Port, metrics: Port, label: str) -> Program:
    """One deployment of the payment service: v1 and v2 share its code and its identity."""
    return _backend(
        f"payment_{version}",
        "payment_service",
        port=port,
        metrics=metrics,
        health_service=PAYMENT_SERVICE,
        workload="payment",
        priority=20,
        label=label,
        env={"PAYMENT_VERSION": version, "PAYMENT_PORT": port, "PAYMENT_METRICS_PORT": metrics},
    )


EDGE_PORT = Port("EDGE_PORT", 8080, "Envoy edge: the public API, the one address users call")
INTERNAL_PORT = Port(
    "INTERNAL_PORT", 8081, "Envoy internal listener: service-to-service calls (mTLS + RBAC)"
)
ADMIN_PORT = Port("ENVOY_ADMIN_PORT", 9901, "Envoy admin (stats, runtime, clusters)")
PROMETHEUS_PORT = Port("PROMETHEUS_PORT", 9090, "Prometheus: UI and HTTP API (127.0.0.1 only)")
REDIS_EXPORTER_PORT = Port(
    "REDIS_EXPORTER_PORT", 9121, "Redis exporter /metrics, for Prometheus (127.0.0.1 only)"
)

#: Keeps the pid record (meshctl.pidlistener): started first and stopped last, so it sees
#: every other process start and stop.
RECORDER = Program(
    name="pidrecord",
    command=(PYTHON, "-m", "meshctl.pidlistener", RECORD_FILE),
    priority=0,
    probe=probes.record_written,
    in_run_dir=True,
    listener=True,
)
#: Keeps nothing on disk: Redis holds caches, locks and idempotency claims, and SQLite
#: (UNIQUE request_id) is the durable backstop.
REDIS = Program(
    name="redis",
    command=(
        *(REDIS_SERVER, "--bind", "127.0.0.1", "--port", REDIS_PORT),
        *("--save", "", "--appendonly", "no", "--dir", "."),
    ),
    priority=1,
    probe=probes.redis_up,
    in_run_dir=True,
    only_without_redis=True,
)
#: Telemetry starts before the mesh and stops after it, so the mesh's first and last seconds
#: are scraped. GOGC=50 (Go's default is 100) trades more collections of these small heaps for
#: memory: Prometheus measured 57 MiB of RSS instead of 67 after two minutes of orders.
_GO_MEMORY = {"GOGC": "50"}
#: The exporter reads REDIS_URL, whoever runs that Redis.
REDIS_EXPORTER = Program(
    name="redis_exporter",
    command=(
        *(REDIS_EXPORTER_BINARY, "-redis.addr", REDIS_TARGET),
        *("-web.listen-address", Loopback(REDIS_EXPORTER_PORT)),
    ),
    priority=5,
    probe=probes.HttpOk(REDIS_EXPORTER_PORT, "/metrics"),
    listens=(REDIS_EXPORTER_PORT,),
    env=_GO_MEMORY,
    scrape=Scrape(REDIS_EXPORTER_PORT),
)
#: Reads prometheus.yml from the run dir (meshctl.prometheus writes it from this registry).
#: A day of data covers the longest alert window (6 h) and keeps the disk small. Exemplar
#: storage keeps the trace ids that OpenMetrics scrapes attach to samples.
PROMETHEUS = Program(
    name="prometheus",
    command=(
        *(PROMETHEUS_BINARY, "--config.file", "prometheus.yml"),
        *("--web.listen-address", Loopback(PROMETHEUS_PORT)),
        *("--storage.tsdb.path", PROMETHEUS_DATA, "--storage.tsdb.retention.time", "1d"),
        *("--enable-feature", "exemplar-storage", "--log.level", "warn"),
    ),
    priority=5,
    probe=probes.HttpOk(PROMETHEUS_PORT, "/-/ready"),
    listens=(PROMETHEUS_PORT,),
    env=_GO_MEMORY,
    in_run_dir=True,
    scrape=Scrape(PROMETHEUS_PORT),
)
INVENTORY = _backend(
    "inventory",
    "inventory_service",
    port=Port("INVENTORY_PORT", 50052, "inventory"),
    metrics=Port("INVENTORY_METRICS_PORT", 9102, "inventory /metrics"),
    health_service=INVENTORY_SERVICE,
    workload="inventory",
    priority=20,
    label="inventory",
)
PAYMENT_V1 = _payment(
    "v1",
    Port("PAYMENT_V1_PORT", 50053, "payment v1"),
    Port("PAYMENT_V1_METRICS_PORT", 9103, "payment v1 /metrics"),
    "payment v1",
)
PAYMENT_V2 = _payment(
    "v2",
    Port("PAYMENT_V2_PORT", 50054, "payment v2 (the canary)"),
    Port("PAYMENT_V2_METRICS_PORT", 9104, "payment v2 /metrics"),
    "payment v2 (canary)",
)
#: The canary's two clusters, in the order `make canary V1=.. V2=..` names their weights.
CANARY = (PAYMENT_V1, PAYMENT_V2)
#: Consumes the order events stream; it calls no one, so it starts with the other backends.
NOTIFICATION = _backend(
    "notification",
    "notification_service",
    port=Port("NOTIFICATION_PORT", 50055, "notification"),
    metrics=Port("NOTIFICATION_METRICS_PORT", 9105, "notification /metrics"),
    health_service=NOTIFICATION_SERVICE,
    workload="notification",
    priority=20,
    label="notification",
)
ORDER = _backend(
    "order",
    "order_service",
    port=Port("ORDER_PORT", 50051, "order"),
    metrics=Port("ORDER_METRICS_PORT", 9101, "order /metrics"),
    health_service=ORDER_SERVICE,
    workload="order",
    # Starts last and stops first: its in-flight sagas finish (or compensate) while Envoy
    # and the services they call still serve.
    priority=40,
    label="order",
)

BACKENDS = (INVENTORY, PAYMENT_V1, PAYMENT_V2, NOTIFICATION, ORDER)
#: --disable-hot-restart: otherwise Envoy dies with its parent (PDEATHSIG), and two Envoys on
#: one machine (say `make up` and `make test`) clash on shared memory.
ENVOY = Program(
    name="envoy",
    command=(ENVOY_BINARY, "-c", "envoy.yaml", "--disable-hot-restart", "--log-level", "warning"),
    priority=30,
    probe=probes.EnvoyReady(tuple(p.name for p in BACKENDS)),
    workload=tls.ENVOY,
    listens=(EDGE_PORT, INTERNAL_PORT, ADMIN_PORT),
    in_run_dir=True,
    scrape=Scrape(ADMIN_PORT, "/stats/prometheus"),
)

#: Everything, in start order (equal priorities keep the order written here).
PROGRAMS = tuple(
    sorted(
        (RECORDER, REDIS, REDIS_EXPORTER, PROMETHEUS, *BACKENDS, ENVOY), key=lambda p: p.priority
    )
)
#: Every port the stack binds, each set by its variable.
PORTS = tuple(port for program in PROGRAMS for port in program.ports)
#: Every identity `up` issues a certificate for.
WORKLOADS = tuple(dict.fromkeys(p.workload for p in PROGRAMS if p.workload is not None))


def program(name: str) -> Program | None:
    return next((p for p in PROGRAMS if p.name == name), None)
