"""Payment settings, read once at start-up from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshkit import faults, settings
from meshkit.tls import WorkloadTls, workload_tls

VERSIONS = ("v1", "v2")
MAX_LATENCY_MS = 60_000
DB_FILE = "payment.db"

#: Codes PAYMENT_FAULT_CODE may name: every status except OK (a "fault" that succeeds is none).
FAULT_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


def parse_fault_code(name: str) -> grpc.StatusCode:
    """A gRPC status name (``UNAVAILABLE``, case-insensitive) as a StatusCode."""
    code = grpc.StatusCode.__members__.get(name.strip().upper())
    if code is None:
        raise ValueError(name)
    return code


PORT = settings.port("PAYMENT_PORT", 50053, doc="this payment deployment's gRPC port")
METRICS_PORT = settings.port(
    "PAYMENT_METRICS_PORT", 9103, doc="this payment deployment's Prometheus /metrics"
)
#: `python -m bench server-model` shows a bare server is far faster with 4 threads than 32 on
#: 2 cores (GIL contention), but `python -m bench mesh` measured no CreateOrder throughput gain
#: from 4 here, so the default stays generous (no queueing).
MAX_WORKERS = settings.integer(
    "PAYMENT_MAX_WORKERS", 32, lo=1, hi=256, doc="threads serving payment's calls"
)
VERSION = settings.choice(
    "PAYMENT_VERSION", "v1", VERSIONS, doc="which deployment this is (the canary is v2)"
)
FAULT_RATE = settings.number(
    "PAYMENT_FAULT_RATE",
    0.0,
    lo=0.0,
    hi=1.0,
    doc="fraction of Charge calls that fail before doing anything",
)
FAULT_CODE = settings.Var(
    "PAYMENT_FAULT_CODE",
    "UNAVAILABLE",
    "the gRPC status those calls fail with",
    parse_fault_code,
    lambda code: code is not grpc.StatusCode.OK,
    "one of " + ", ".join(FAULT_CODES),
)
LATENCY_MS = settings.integer(
    "PAYMENT_LATENCY_MS", 0, lo=0, hi=MAX_LATENCY_MS, doc="latency added to every Charge"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One payment deployment (v1 or v2); both share ``data_dir/payment.db``."""

    host: str = settings.HOST.field()
    port: int = PORT.field()
    #: None: no /metrics endpoint (tests); 0: any free port.
    metrics_port: int | None = METRICS_PORT.field()
    max_workers: int = MAX_WORKERS.field()
    version: str = VERSION.field()
    data_dir: Path = settings.DATA_DIR.required()
    fault_rate: float = FAULT_RATE.field()
    fault_code: grpc.StatusCode = FAULT_CODE.field()
    latency_ms: int = LATENCY_MS.field()
    #: Where the live faults file ``payment_<version>.json`` is, that replaces the three above
    #: while it exists (``make fault AT=server``, meshkit.faults).
    faults_dir: Path = faults.FAULTS_DIR.field()
    #: Serve only mTLS, as spiffe://mesh.local/payment; None serves plaintext (MESH_MTLS=0).
    tls: WorkloadTls | None = None

    def __post_init__(self) -> None:
        settings.check_fields(self)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def fault_file(self) -> Path:
        return faults.fault_path(self.faults_dir, f"payment_{self.version}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Reads every PAYMENT_* variable; a bad value raises SettingsError naming it."""
        return settings.from_env(cls, env, tls=workload_tls("payment", env))
