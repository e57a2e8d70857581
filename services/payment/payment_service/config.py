"""Payment settings, read once at start-up from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshkit.settings import (
    DEFAULT_HOST,
    SettingsError,
    data_dir,
    env_float,
    env_int,
    env_port,
    env_str,
)
from meshkit.tls import WorkloadTls, workload_tls

DEFAULT_PORT = 50053
DEFAULT_METRICS_PORT = 9103
#: Threads serving calls. `python -m bench server-model` shows a bare server is far faster with
#: 4 threads than 32 on 2 cores (GIL contention), but `python -m bench mesh` measured no
#: CreateOrder throughput gain from 4 here, so the default stays generous (no queueing).
DEFAULT_MAX_WORKERS = 32
MAX_MAX_WORKERS = 256
VERSIONS = ("v1", "v2")
DEFAULT_VERSION = "v1"
DEFAULT_FAULT_CODE = grpc.StatusCode.UNAVAILABLE
MAX_LATENCY_MS = 60_000
DB_FILE = "payment.db"

#: Codes PAYMENT_FAULT_CODE may name: every status except OK (a "fault" that succeeds is none).
FAULT_CODES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


def parse_fault_code(name: str, *, var: str = "PAYMENT_FAULT_CODE") -> grpc.StatusCode:
    """A gRPC status name (``UNAVAILABLE``, case-insensitive) as a StatusCode; never OK."""
    code = grpc.StatusCode.__members__.get(name.strip().upper())
    if code is None or code is grpc.StatusCode.OK:
        raise SettingsError(f"{var}={name!r}: must be one of {', '.join(FAULT_CODES)}")
    return code


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One payment deployment (v1 or v2); both share ``data_dir/payment.db``."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: None: no /metrics endpoint (tests); 0: any free port.
    metrics_port: int | None = DEFAULT_METRICS_PORT
    max_workers: int = DEFAULT_MAX_WORKERS
    version: str = DEFAULT_VERSION
    data_dir: Path
    fault_rate: float = 0.0
    fault_code: grpc.StatusCode = DEFAULT_FAULT_CODE
    latency_ms: int = 0
    #: Serve only mTLS, as spiffe://mesh.local/payment; None serves plaintext (MESH_MTLS=0).
    tls: WorkloadTls | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_workers <= MAX_MAX_WORKERS:
            raise SettingsError(
                f"PAYMENT_MAX_WORKERS={self.max_workers}: must be in 1..{MAX_MAX_WORKERS}"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"PAYMENT_PORT={self.port}: must be in 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"PAYMENT_METRICS_PORT={self.metrics_port}: must be in 0..65535")
        if self.version not in VERSIONS:
            raise SettingsError(f"PAYMENT_VERSION={self.version!r}: must be one of v1, v2")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise SettingsError(f"PAYMENT_FAULT_RATE={self.fault_rate}: must be in 0.0..1.0")
        if self.fault_code is grpc.StatusCode.OK:
            raise SettingsError(f"PAYMENT_FAULT_CODE='OK': must be one of {', '.join(FAULT_CODES)}")
        if not 0 <= self.latency_ms <= MAX_LATENCY_MS:
            raise SettingsError(f"PAYMENT_LATENCY_MS={self.latency_ms}: must be in 0..60000")

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Reads every PAYMENT_* variable; a bad value raises SettingsError naming it."""
        return cls(
            host=env_str("MESH_HOST", DEFAULT_HOST, env=env),
            port=env_port("PAYMENT_PORT", DEFAULT_PORT, env=env),
            metrics_port=env_port("PAYMENT_METRICS_PORT", DEFAULT_METRICS_PORT, env=env),
            max_workers=env_int(
                "PAYMENT_MAX_WORKERS", DEFAULT_MAX_WORKERS, lo=1, hi=MAX_MAX_WORKERS, env=env
            ),
            version=env_str("PAYMENT_VERSION", DEFAULT_VERSION, env=env),
            data_dir=data_dir(env),
            fault_rate=env_float("PAYMENT_FAULT_RATE", 0.0, lo=0.0, hi=1.0, env=env),
            fault_code=parse_fault_code(
                env_str("PAYMENT_FAULT_CODE", DEFAULT_FAULT_CODE.name, env=env)
            ),
            latency_ms=env_int("PAYMENT_LATENCY_MS", 0, lo=0, hi=MAX_LATENCY_MS, env=env),
            tls=workload_tls("payment", env),
        )
