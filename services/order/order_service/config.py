"""Order service settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import resilience
from mesh.inventory.v1 import inventory_pb2
from mesh.payment.v1 import payment_pb2
from meshkit import order_events, settings
from meshkit.settings import SettingsError
from meshkit.tls import WorkloadTls, workload_tls
from order_service import outbox, stuck
from order_service.leases import DEFAULT_LEASE_MS
from order_service.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S, RateLimitOptions

#: Service-to-service calls go through Envoy's internal listener (as through a sidecar), so
#: mTLS, RBAC and the payment canary apply to them.
DEFAULT_TARGET = "127.0.0.1:8081"


def _host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(host and sep and port.isdigit())


PORT = settings.port("ORDER_PORT", 50051, doc="order's gRPC port (mTLS; callers use the edge)")
METRICS_PORT = settings.port("ORDER_METRICS_PORT", 9101, doc="order's Prometheus /metrics")
INVENTORY_TARGET = settings.text(
    "INVENTORY_TARGET",
    DEFAULT_TARGET,
    doc="where order calls inventory",
    check=_host_port,
    allowed="host:port",
)
PAYMENT_TARGET = settings.text(
    "PAYMENT_TARGET",
    DEFAULT_TARGET,
    doc="where order calls payment",
    check=_host_port,
    allowed="host:port",
)
CALL_TIMEOUT_MS = settings.integer(
    "ORDER_CALL_TIMEOUT_MS",
    2_000,
    lo=1,
    hi=60_000,
    doc="deadline of each outbound call (capped by the caller's deadline)",
)
RECOVERY_INTERVAL_S = settings.number(
    "ORDER_RECOVERY_INTERVAL_S",
    5.0,
    lo=0.01,
    hi=86_400,
    doc="longest wait between recovery passes (sooner while orders are due); a stuck order's"
    " first retry",
)
RECOVERY_AGE_S = settings.number(
    "ORDER_RECOVERY_AGE_S",
    2.0,
    lo=0,
    hi=86_400,
    doc="how long a PENDING order must be idle before recovery takes it over",
)
RECOVERY_WORKERS = settings.integer(
    "ORDER_RECOVERY_WORKERS", 4, lo=1, hi=64, doc="orders a recovery pass drives at once"
)
RECOVERY_MAX_BACKOFF_S = settings.number(
    "ORDER_RECOVERY_MAX_BACKOFF_S",
    stuck.DEFAULT_MAX_RETRY_S,
    lo=0.01,
    hi=3_600,
    doc="longest wait before a stuck order is retried (the wait doubles after each run)",
)
ATTENTION_RUNS = settings.integer(
    "ORDER_ATTENTION_RUNS",
    stuck.DEFAULT_ATTENTION_AFTER,
    lo=1,
    hi=10_000,
    doc="saga runs in a row that leave an order at one step before it needs a person",
)
#: Short, so a crashed runner's orders are free again within seconds; the keep-alive renews
#: the leases of sagas still running, however long a step takes.
LEASE_MS = settings.integer(
    "ORDER_LEASE_MS",
    DEFAULT_LEASE_MS,
    lo=1_000,
    hi=600_000,
    doc="term of a per-order saga lease, renewed while its saga runs (a crashed runner's"
    " orders wait at most this long)",
)
DUPLICATE_WAIT_S = settings.number(
    "ORDER_DUPLICATE_WAIT_S",
    30.0,
    lo=0,
    hi=3_600,
    doc="how long a duplicate CreateOrder waits for the first to finish",
)
MAX_WORKERS = settings.integer(
    "ORDER_MAX_WORKERS", 32, lo=1, hi=256, doc="threads serving order's calls"
)
#: Below ORDER_MAX_WORKERS: CreateOrder waits on inventory and payment, and when they are slow
#: its calls would otherwise take every thread, GetOrder's and the health checks' too.
CREATE_MAX_IN_FLIGHT = settings.integer(
    "ORDER_CREATE_MAX_IN_FLIGHT",
    24,
    lo=1,
    hi=255,
    doc="CreateOrder calls served at once, below ORDER_MAX_WORKERS; more are refused at once"
    " with RESOURCE_EXHAUSTED and a pushback",
)
#: Demo-sized, so a short loop of grpcurl shows the limit; a real shop would allow far more.
RATE_PER_S = settings.number(
    "ORDER_RATE_PER_S",
    DEFAULT_RATE_PER_S,
    lo=0,
    hi=1_000_000,
    doc="new orders per second each customer may place (GCRA in Redis); 0: no limit",
)
RATE_BURST = settings.integer(
    "ORDER_RATE_BURST",
    DEFAULT_BURST,
    lo=1,
    hi=1_000_000,
    doc="new orders a customer may place at once after a pause; then ORDER_RATE_PER_S",
)

EVENTS_MAXLEN = settings.integer(
    "ORDER_EVENTS_MAXLEN",
    order_events.DEFAULT_MAXLEN,
    lo=0,
    hi=1_000_000_000,
    doc=f"order events the {order_events.STREAM} stream keeps at least (XADD MAXLEN ~);"
    " 0: no events (no outbox, no relay)",
)
OUTBOX_POLL_S = settings.number(
    "ORDER_OUTBOX_POLL_S",
    outbox.DEFAULT_POLL_S,
    lo=0.01,
    hi=3_600,
    doc="longest wait of the outbox relay between looks (a commit wakes it at once)",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = settings.HOST.field()
    port: int = PORT.field()
    #: None: no /metrics endpoint (tests); 0: any free port.
    metrics_port: int | None = METRICS_PORT.field()
    data_dir: Path = settings.DATA_DIR.required()
    redis_url: str = settings.REDIS_URL.required()
    inventory_target: str = INVENTORY_TARGET.field()
    payment_target: str = PAYMENT_TARGET.field()
    call_timeout_ms: int = CALL_TIMEOUT_MS.field()
    recovery_interval_s: float = RECOVERY_INTERVAL_S.field()
    recovery_age_s: float = RECOVERY_AGE_S.field()
    recovery_workers: int = RECOVERY_WORKERS.field()
    recovery_max_backoff_s: float = RECOVERY_MAX_BACKOFF_S.field()
    attention_runs: int = ATTENTION_RUNS.field()
    lease_ms: int = LEASE_MS.field()
    duplicate_wait_s: float = DUPLICATE_WAIT_S.field()
    max_workers: int = MAX_WORKERS.field()
    create_max_in_flight: int = CREATE_MAX_IN_FLIGHT.field()
    rate_per_s: float = RATE_PER_S.field()
    rate_burst: int = RATE_BURST.field()
    events_maxlen: int = EVENTS_MAXLEN.field()
    outbox_poll_s: float = OUTBOX_POLL_S.field()
    #: mTLS as spiffe://mesh.local/order: serving, and calling Envoy's internal listener.
    tls: WorkloadTls | None = None
    #: Deadlines, retries, breakers and bulkheads of the outbound channels (validated at start-up).
    policy: resilience.ClientPolicy = field(default_factory=lambda: load_outbound_policy({}))

    def __post_init__(self) -> None:
        settings.check_fields(self)
        if self.create_max_in_flight >= self.max_workers:
            raise settings.SettingsError(
                f"{CREATE_MAX_IN_FLIGHT.name}={self.create_max_in_flight}: must be below"
                f" {MAX_WORKERS.name}={self.max_workers}, so reads and health keep threads"
            )

    @property
    def retry_policy(self) -> stuck.RetryPolicy:
        """When recovery retries a stuck order, and when it needs a person."""
        return stuck.RetryPolicy(
            first_retry_s=min(self.recovery_interval_s, self.recovery_max_backoff_s),
            max_retry_s=self.recovery_max_backoff_s,
            attention_after=self.attention_runs,
        )

    @property
    def rate_limit(self) -> RateLimitOptions:
        return RateLimitOptions(per_s=self.rate_per_s, burst=self.rate_burst)

    @property
    def events(self) -> bool:
        """Whether finished orders' events go through the outbox to the stream."""
        return self.events_maxlen > 0

    @property
    def call_timeout_s(self) -> float:
        return self.call_timeout_ms / 1000

    @property
    def db_path(self) -> Path:
        return self.data_dir / "order.db"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return settings.from_env(
            cls, env, tls=workload_tls("order", env), policy=load_outbound_policy(env)
        )


#: The policy shipped with the service; RESILIENCE_POLICY_FILE points at another one.
DEFAULT_POLICY_FILE = Path(__file__).with_name("resilience.yaml")

OUTBOUND_SERVICES = (
    inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
    payment_pb2.DESCRIPTOR.services_by_name["PaymentService"],
)


def load_outbound_policy(env: Mapping[str, str]) -> resilience.ClientPolicy:
    """Parses and validates the outbound policy; a bad value stops start-up naming the field."""
    path = env.get(resilience.ENV_POLICY_FILE) or str(DEFAULT_POLICY_FILE)
    try:
        return resilience.load_policy(path, env=env, descriptors=OUTBOUND_SERVICES)
    except resilience.PolicyError as error:
        raise SettingsError(f"{path}: {error}") from None
