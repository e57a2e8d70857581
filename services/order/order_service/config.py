"""Order service settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import resilience
from mesh.inventory.v1 import inventory_pb2
from mesh.payment.v1 import payment_pb2
from meshkit import settings
from meshkit.settings import SettingsError
from meshkit.tls import WorkloadTls, workload_tls

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
    doc="how often recovery looks for stuck PENDING orders",
)
RECOVERY_AGE_S = settings.number(
    "ORDER_RECOVERY_AGE_S", 5.0, lo=0, hi=86_400, doc="how idle a PENDING order must be"
)
#: Outlives a whole saga run (a few calls of ORDER_CALL_TIMEOUT_MS); the saga renews it when
#: Redis last confirmed it over a second ago, so a runner that dies frees it within a lease.
LOCK_LEASE_MS = settings.integer(
    "ORDER_LOCK_LEASE_MS",
    30_000,
    lo=1_000,
    hi=600_000,
    doc="lease of the per-order saga lock (a crashed runner's orders wait this long)",
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
    lock_lease_ms: int = LOCK_LEASE_MS.field()
    duplicate_wait_s: float = DUPLICATE_WAIT_S.field()
    max_workers: int = MAX_WORKERS.field()
    #: mTLS as spiffe://mesh.local/order: serving, and calling Envoy's internal listener.
    tls: WorkloadTls | None = None
    #: Deadlines, retries, breakers and bulkheads of the outbound channels (validated at start-up).
    policy: resilience.ClientPolicy = field(default_factory=lambda: load_outbound_policy({}))

    def __post_init__(self) -> None:
        settings.check_fields(self)
        # The lease must outlive one step (a call plus its compensation) or a second runner
        # could take the order over while the first is still waiting on a reply.
        if self.lock_lease_ms < 4 * self.call_timeout_ms:
            raise SettingsError(
                f"ORDER_LOCK_LEASE_MS={self.lock_lease_ms}: must be >= 4 x ORDER_CALL_TIMEOUT_MS "
                f"({self.call_timeout_ms})"
            )

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
