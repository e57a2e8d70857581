"""Notification settings, read once at start-up from the environment."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshkit import settings
from meshkit.tls import WorkloadTls, workload_tls

DB_FILE = "notification.db"
_CONSUMER_RE = re.compile(r"[A-Za-z0-9._-]{1,48}")

PORT = settings.port("NOTIFICATION_PORT", 50055, doc="notification's gRPC port (mTLS, Envoy only)")
METRICS_PORT = settings.port(
    "NOTIFICATION_METRICS_PORT", 9105, doc="notification's Prometheus /metrics"
)
#: One read RPC; its calls are point queries of one SQLite file, so a few threads serve it and
#: each costs this process a stack and a SQLite connection.
MAX_WORKERS = settings.integer(
    "NOTIFICATION_MAX_WORKERS", 4, lo=1, hi=256, doc="threads serving notification's calls"
)
CONSUMERS = settings.integer(
    "NOTIFICATION_CONSUMERS",
    2,
    lo=1,
    hi=32,
    doc="consumers of the order events stream in this process (threads, one group)",
)
CONSUMER_PREFIX = settings.text(
    "NOTIFICATION_CONSUMER_PREFIX",
    "",
    doc="consumer names are <prefix>-<n>: a restart takes back its own pending events;"
    " empty: the host name",
    check=lambda value: value == "" or _CONSUMER_RE.fullmatch(value) is not None,
    allowed="empty or 1-48 characters of [A-Za-z0-9._-]",
)
BATCH = settings.integer(
    "NOTIFICATION_BATCH",
    16,
    lo=1,
    hi=1000,
    doc="events a consumer reads at once (COUNT), stores in one transaction, acks in one XACK",
)
#: Also the longest a stop waits for a consumer's blocked read to return.
BLOCK_MS = settings.integer(
    "NOTIFICATION_BLOCK_MS",
    1000,
    lo=1,
    hi=60_000,
    doc="how long a consumer's read waits for new events (XREADGROUP BLOCK)",
)
CLAIM_IDLE_MS = settings.integer(
    "NOTIFICATION_CLAIM_IDLE_MS",
    30_000,
    lo=1,
    hi=86_400_000,
    doc="an event delivered but not acknowledged this long is claimed by a live consumer",
)
MAX_DELIVERIES = settings.integer(
    "NOTIFICATION_MAX_DELIVERIES",
    5,
    lo=1,
    hi=1000,
    doc="deliveries of an event before it goes to the dead-letter stream",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where notification listens, keeps its data, and how it consumes the events stream."""

    host: str = settings.HOST.field()
    port: int = PORT.field()
    #: None: no /metrics endpoint (tests); 0: any free port.
    metrics_port: int | None = METRICS_PORT.field()
    max_workers: int = MAX_WORKERS.field()
    data_dir: Path = settings.DATA_DIR.required()
    redis_url: str = settings.REDIS_URL.field()
    consumers: int = CONSUMERS.field()
    consumer_prefix: str = CONSUMER_PREFIX.field()
    batch: int = BATCH.field()
    block_ms: int = BLOCK_MS.field()
    claim_idle_ms: int = CLAIM_IDLE_MS.field()
    max_deliveries: int = MAX_DELIVERIES.field()
    #: Serve only mTLS, as spiffe://mesh.local/notification; None serves plaintext (MESH_MTLS=0).
    tls: WorkloadTls | None = None

    def __post_init__(self) -> None:
        settings.check_fields(self)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    def consumer_names(self) -> tuple[str, ...]:
        """Stable across restarts of this program on this host, so a restarted consumer reads
        back the events it had been given and not acknowledged before it died."""
        prefix = self.consumer_prefix or socket.gethostname()
        return tuple(f"{prefix}-{n}" for n in range(self.consumers))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Reads every NOTIFICATION_* variable; a bad value raises SettingsError naming it."""
        return settings.from_env(cls, env, tls=workload_tls("notification", env))
