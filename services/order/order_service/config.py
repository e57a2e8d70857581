"""Order service settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import resilience
from mesh.inventory.v1 import inventory_pb2
from mesh.payment.v1 import payment_pb2
from meshkit.settings import (
    DEFAULT_HOST,
    SettingsError,
    data_dir,
    env_float,
    env_int,
    env_port,
    env_str,
    redis_url,
)
from meshkit.tls import WorkloadTls, workload_tls

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9101
#: Service-to-service calls go through Envoy's internal listener (as through a sidecar), so
#: mTLS, RBAC and the payment canary apply to them.
DEFAULT_TARGET = "127.0.0.1:8081"
DEFAULT_CALL_TIMEOUT_MS = 2_000
DEFAULT_RECOVERY_INTERVAL_S = 5.0
DEFAULT_RECOVERY_AGE_S = 5.0
#: Outlives a whole saga run (a few calls of DEFAULT_CALL_TIMEOUT_MS); extended before each step.
DEFAULT_LOCK_LEASE_MS = 30_000
#: A duplicate CreateOrder waits at most this long for the first (less if its deadline is nearer).
DEFAULT_DUPLICATE_WAIT_S = 30.0
DEFAULT_MAX_WORKERS = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    metrics_port: int | None = DEFAULT_METRICS_PORT
    data_dir: Path
    redis_url: str
    inventory_target: str = DEFAULT_TARGET
    payment_target: str = DEFAULT_TARGET
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_MS / 1000
    recovery_interval_s: float = DEFAULT_RECOVERY_INTERVAL_S
    recovery_age_s: float = DEFAULT_RECOVERY_AGE_S
    lock_lease_ms: int = DEFAULT_LOCK_LEASE_MS
    duplicate_wait_s: float = DEFAULT_DUPLICATE_WAIT_S
    max_workers: int = DEFAULT_MAX_WORKERS
    #: mTLS as spiffe://mesh.local/order: serving, and calling Envoy's internal listener.
    tls: WorkloadTls | None = None
    #: Deadlines, retries, breakers and bulkheads of the outbound channels (validated at start-up).
    policy: resilience.ClientPolicy = field(default_factory=lambda: load_outbound_policy({}))

    def __post_init__(self) -> None:
        if self.call_timeout_s <= 0:
            raise SettingsError(f"call_timeout_s must be > 0, got {self.call_timeout_s}")
        if self.recovery_interval_s <= 0:
            raise SettingsError(f"recovery_interval_s must be > 0, got {self.recovery_interval_s}")
        if self.recovery_age_s < 0:
            raise SettingsError(f"recovery_age_s must be >= 0, got {self.recovery_age_s}")
        # The lease must outlive one step (a call plus its compensation) or a second runner
        # could take the order over while the first is still waiting on a reply.
        if self.lock_lease_ms < 4 * self.call_timeout_s * 1000:
            raise SettingsError(
                f"ORDER_LOCK_LEASE_MS={self.lock_lease_ms}: must be >= 4 x ORDER_CALL_TIMEOUT_MS "
                f"({self.call_timeout_s * 1000:.0f})"
            )
        for name in ("inventory_target", "payment_target"):
            target: str = getattr(self, name)
            if not target or ":" not in target:
                raise SettingsError(f"{name.upper()}={target!r}: must be host:port")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "order.db"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            host=env_str("MESH_HOST", DEFAULT_HOST, env=env),
            port=env_port("ORDER_PORT", DEFAULT_PORT, env=env),
            metrics_port=env_port("ORDER_METRICS_PORT", DEFAULT_METRICS_PORT, env=env),
            data_dir=data_dir(env),
            redis_url=redis_url(env),
            inventory_target=env_str("INVENTORY_TARGET", DEFAULT_TARGET, env=env),
            payment_target=env_str("PAYMENT_TARGET", DEFAULT_TARGET, env=env),
            call_timeout_s=env_int(
                "ORDER_CALL_TIMEOUT_MS", DEFAULT_CALL_TIMEOUT_MS, lo=1, hi=60_000, env=env
            )
            / 1000,
            recovery_interval_s=env_float(
                "ORDER_RECOVERY_INTERVAL_S",
                DEFAULT_RECOVERY_INTERVAL_S,
                lo=0.01,
                hi=86_400,
                env=env,
            ),
            recovery_age_s=env_float(
                "ORDER_RECOVERY_AGE_S", DEFAULT_RECOVERY_AGE_S, lo=0, hi=86_400, env=env
            ),
            lock_lease_ms=env_int(
                "ORDER_LOCK_LEASE_MS", DEFAULT_LOCK_LEASE_MS, lo=1_000, hi=600_000, env=env
            ),
            duplicate_wait_s=env_float(
                "ORDER_DUPLICATE_WAIT_S", DEFAULT_DUPLICATE_WAIT_S, lo=0, hi=3_600, env=env
            ),
            max_workers=env_int("ORDER_MAX_WORKERS", DEFAULT_MAX_WORKERS, lo=1, hi=1_024, env=env),
            policy=load_outbound_policy(env),
            tls=workload_tls("order", env),
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
